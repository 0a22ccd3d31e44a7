#!/usr/bin/env bash
# `make bench-price`: calc_price through the edge at new_percent 100, on MariaDB (issue 3's targets).
#
# Starts (all on 127.0.0.1, all stopped again on exit, Ctrl-C or failure), one after the other:
#   edge-1w   :29210  shopping-edge, one process (admin :29211), access log on, bench/routing-price.yaml
#   edge-2w   :29212  shopping-edge --workers 2 (admin :29213)
# against the database `bench_shop` on the local MariaDB (created if missing, re-seeded with the demo data).
# No old-shopping process: at new_percent 100 calc_price never leaves the edge (EDGE_LEGACY_URL points
# at :29219, where nothing listens). bench/pricebench.py measures each edge: wrk max throughput
# (-t1 -c32 -d15s, unpaced) and latency at 1000 req/s (wrk paced by bench/lua/calc_price.lua's delay()),
# a py-spy profile, and bench/pricing_speed.py (the pure pricing function). Figures go to bench/RESULTS.md
# ("calc_price through the edge (make bench-price)"); raw outputs to bench/out/price/.
#
# Knobs (environment): BENCH_PORT_BASE (29210); BENCH_DB (bench_shop); BENCH_USERS (50);
# BENCH_WORKERS ("1 2": which edges to measure); BENCH_PROFILE=0 skips py-spy;
# BENCH_MAX_SECONDS (15), BENCH_PACED_SECONDS (20), BENCH_WARMUP_SECONDS (3), BENCH_RATE (1000),
# BENCH_MAX_CONNS (32), BENCH_PACED_CONNS (32); BENCH_RESULTS_MD.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
export BENCH_DRIVER=bench/pricebench.py


# ---------------------------------------------------------------- go: bench-price
BASE=${BENCH_PORT_BASE:-29210}
P_E1=$BASE P_E1_ADMIN=$((BASE + 1)) P_E2=$((BASE + 2)) P_E2_ADMIN=$((BASE + 3)) P_NOWHERE=$((BASE + 9))
WORKERS=${BENCH_WORKERS:-1 2}
export BENCH_OUT=$ROOT/bench/out/price

need_tools
install_traps
rm -rf "$BENCH_OUT"
mkdir -p "$BENCH_OUT"
check_ports "$P_E1" "$P_E1_ADMIN" "$P_E2" "$P_E2_ADMIN" "$P_NOWHERE"

bench_py facts
prepare_db
bench_py workload --users "$BENCH_USERS"

for w in $WORKERS; do
    if [[ $w == 1 ]]; then name=edge-1w port=$P_E1 admin=$P_E1_ADMIN label="edge (1 worker)"
    else name=edge-${w}w port=$P_E2 admin=$P_E2_ADMIN label="edge ($w workers)"; fi
    say "starting $label on :$port (admin :$admin), calc_price at new_percent 100 on $BENCH_DB, access log on"
    start_edge "$name" bench/routing-price.yaml "$port" "$admin" "$w" "http://$HOST:$P_NOWHERE"
    var="PID_${name//-/_}"
    pid=${!var}
    bench_py check "$name" "http://$HOST:$port" --edge
    bench_py measure "$name" "http://$HOST:$port" --pid "$pid" --db-pid "$DB_PID" \
        --metrics "http://$HOST:$admin/metrics" --label "$label" --workers "$w"
    if [[ $BENCH_PROFILE != 0 ]]; then
        bench_py profile "$name" "http://$HOST:$port" --pid "$pid" --label "$label"
    fi
    stop "$name"
done

say "pure pricing function (bench/pricing_speed.py)"
if [[ $BENCH_PROFILE != 0 ]]; then bench_py speed --profile; else bench_py speed; fi
bench_py report --kind price --results-md "$RESULTS_MD"
