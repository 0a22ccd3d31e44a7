#!/usr/bin/env bash
# `make bench-order`: place_order through the edge at new_percent 100 on MariaDB (issue 5's targets:
# ≥ 300 orders/s sustained, p99 ≤ 150 ms at 300/s, no deadlock in the log).
#
# Starts (all on 127.0.0.1, all stopped again on exit, Ctrl-C or failure), one after the other:
#   edge-1w   :29230  shopping-edge, one process (admin :29231), access log on, bench/routing-order.yaml
#   edge-2w   :29232  shopping-edge --workers 2 (admin :29233)
# against the database `bench_order` on the local MariaDB (created if missing, re-seeded with the demo data, then
# restocked: bench/orderbench.py prepare). No old-shopping process: at new_percent 100 calc_price and place_order
# never leave the edge (EDGE_LEGACY_URL points at :29239, where nothing listens).
# bench/orderbench.py quotes each user's cart once, checks one order per user, then measures each edge: wrk
# sustained maximum (-t1 -c32 -d30s, unpaced) and latency at 300 orders/s (paced by bench/lua/place_order.lua's
# delay()), counting orders written, InnoDB deadlocks and deadlock lines in the edge's log; finally `verify`
# checks that stock, wallets, history and outbox add up. Then, on the last edge, the flash-sale variant: every order
# also buys one unit of SKU 1, so all checkouts queue on one stock row (diagnostic: lock waits, and still no deadlock). Figures go to bench/RESULTS.md ("place_order through the
# edge (make bench-order)"); raw outputs to bench/out/order/.
#
# Knobs (environment): BENCH_PORT_BASE (29230); BENCH_DB (bench_order); BENCH_USERS (200);
# BENCH_WORKERS ("1 2"); BENCH_MAX_SECONDS (30), BENCH_PACED_SECONDS (60), BENCH_WARMUP_SECONDS (3),
# BENCH_RATE (300), BENCH_MAX_CONNS (32), BENCH_PACED_CONNS (64); BENCH_HOT_SKU (1; 0 skips the flash-sale runs);
# BENCH_RESULTS_MD.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BENCH_DB=${BENCH_DB:-bench_order}
export BENCH_USERS=${BENCH_USERS:-200}
export BENCH_DRIVER=bench/orderbench.py
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

BASE=${BENCH_PORT_BASE:-29230}
P_E1=$BASE P_E1_ADMIN=$((BASE + 1)) P_E2=$((BASE + 2)) P_E2_ADMIN=$((BASE + 3)) P_NOWHERE=$((BASE + 9))
WORKERS=${BENCH_WORKERS:-1 2}
export BENCH_OUT=$ROOT/bench/out/order
USERS=$BENCH_USERS
HOT_SKU=${BENCH_HOT_SKU:-1}

need_tools
install_traps
rm -rf "$BENCH_OUT"
mkdir -p "$BENCH_OUT"
check_ports "$P_E1" "$P_E1_ADMIN" "$P_E2" "$P_E2_ADMIN" "$P_NOWHERE"

bench_py facts
prepare_db
bench_py prepare

first=1
for w in $WORKERS; do
    if [[ $w == 1 ]]; then name=edge-1w port=$P_E1 admin=$P_E1_ADMIN label="edge (1 worker)"
    else name=edge-${w}w port=$P_E2 admin=$P_E2_ADMIN label="edge ($w workers)"; fi
    say "starting $label on :$port (admin :$admin), place_order at new_percent 100 on $BENCH_DB, access log on"
    start_edge "$name" bench/routing-order.yaml "$port" "$admin" "$w" "http://$HOST:$P_NOWHERE"
    var="PID_${name//-/_}"
    pid=${!var}
    if ((first)); then bench_py workload "http://$HOST:$port" --users "$USERS" --hot-sku "$HOT_SKU"; first=0; fi
    bench_py check "$name" "http://$HOST:$port"
    bench_py measure "$name" "http://$HOST:$port" --pid "$pid" --db-pid "$DB_PID" \
        --metrics "http://$HOST:$admin/metrics" --label "$label" --workers "$w"
    if [[ $HOT_SKU != 0 && $w == "${WORKERS##* }" ]]; then
        say "$label, flash sale: every order also buys SKU $HOT_SKU (all checkouts queue on one stock row)"
        bench_py check "$name" "http://$HOST:$port" --hot
        bench_py measure "$name-hot" "http://$HOST:$port" --hot --log "$name" --pid "$pid" --db-pid "$DB_PID" \
            --metrics "http://$HOST:$admin/metrics" --label "$label, SKU $HOT_SKU in every order" --workers "$w"
    fi
    stop "$name"
done

bench_py verify
bench_py report --results-md "$RESULTS_MD"
