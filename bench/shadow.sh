#!/usr/bin/env bash
# `make bench-shadow`: what shadow mode costs the client, and whether the edge's memory stays bounded
# when every shadowed answer differs (issue 4's targets).
#
# Starts (all on 127.0.0.1, all stopped again on exit, Ctrl-C or failure):
#   legacy    :29220  old-shopping emulator (python -m emulators.legacy) on the MariaDB database bench_shop,
#                     its control API (/_emulator/*: fault knobs, stats) on 127.0.0.1:29221
#   edge      :29222  shopping-edge (admin :29223), calc_price at new_percent 100 on bench_shop, access log on,
#                     one fresh process (or gunicorn --workers N) per configuration, in this order:
#                     shadow off (bench/routing-price.yaml), shadow 100 % (bench/routing-shadow-100.yaml),
#                     shadow 10 % (bench/routing-shadow-10.yaml); for 1 worker, 2 workers, and 2 workers with the
#                     emulator reniced to 19
# bench/pricebench.py measures each exactly as bench-price does (wrk max throughput, latency at 1000 req/s
# paced by bench/lua/calc_price.lua) plus the shadow outcome counters; then py-spy of the shadow-100 edge;
# then the soak: a fresh 1-worker shadow-100 edge, the emulator's fault knob stamping a random
# data.quote_time on every legacy answer (so every comparison differs), load for BENCH_SHADOW_SOAK seconds,
# VmRSS every 30 s, and at the end GET /_edge/shadow and /metrics. Figures go to bench/RESULTS.md
# ("Shadow mode: calc_price (make bench-shadow)"); raw outputs to bench/out/shadow/.
#
# Knobs (environment): BENCH_SHADOW_SOAK (600 s; 60 for a quick run; 0 skips it and keeps the previous
# run's soak figures in the report, labelled with their date);
# BENCH_SHADOW_SOAK_RATE (0 = unpaced wrk -c32, as fast as the edge goes; N = paced at N req/s);
# BENCH_SHADOW_GROUPS ("1:0 2:0 2:19": the edges measured, as WORKERS:NICE — the edge's worker count and the
# emulator's nice level meanwhile; at nice 19 the colocated emulator only gets CPU the edge, MariaDB and wrk
# leave, a stand-in for old shopping running on its own machines);
# BENCH_PROFILE=0 skips py-spy; BENCH_PORT_BASE (29220); BENCH_DB (bench_shop); BENCH_USERS (50); and
# bench-price's BENCH_MAX_SECONDS, BENCH_PACED_SECONDS, BENCH_WARMUP_SECONDS, BENCH_RATE, BENCH_*_CONNS.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
export BENCH_DRIVER=bench/pricebench.py

BASE=${BENCH_PORT_BASE:-29220}
P_LEGACY=$BASE P_LEGACY_ADMIN=$((BASE + 1)) P_EDGE=$((BASE + 2)) P_ADMIN=$((BASE + 3))
# Each group is WORKERS[:NICE]: the edge's worker count and the emulator's nice level meanwhile.
GROUPS_=${BENCH_SHADOW_GROUPS:-1:0 2:0 2:19}
SOAK=${BENCH_SHADOW_SOAK:-600}
SOAK_RATE=${BENCH_SHADOW_SOAK_RATE:-0}
LEGACY_URL=http://$HOST:$P_LEGACY
# The emulator serves its knobs on loopback only, never on the port the edge forwards to.
LEGACY_ADMIN_URL=http://127.0.0.1:$P_LEGACY_ADMIN
export BENCH_OUT=$ROOT/bench/out/shadow

need_tools
install_traps
# BENCH_SHADOW_SOAK=0 keeps the last soak's figures (labelled with their date) instead of dropping them
prev=
if [[ $SOAK == 0 && -f $BENCH_OUT/results.json ]]; then
    prev=$(mktemp "${TMPDIR:-/tmp}/bench-shadow-prev.XXXXXX")
    cp "$BENCH_OUT/results.json" "$prev"
fi
rm -rf "$BENCH_OUT"
mkdir -p "$BENCH_OUT"
check_ports "$P_LEGACY" "$P_LEGACY_ADMIN" "$P_EDGE" "$P_ADMIN"

bench_py facts
if [[ -n $prev ]]; then
    bench_py carry-soak "$prev"
    rm -f "$prev"
fi
prepare_db
bench_py workload --users "$BENCH_USERS"

say "starting the old-shopping emulator on :$P_LEGACY (database $BENCH_DB)"
start legacy "$PY" -m emulators.legacy --host "$HOST" --port "$P_LEGACY" --admin-port "$P_LEGACY_ADMIN" --db-url "$DB_URL"
wait_http legacy "$PID_legacy" "$LEGACY_ADMIN_URL/_emulator/health"
curl -fsS -X DELETE -o /dev/null "$LEGACY_ADMIN_URL/_emulator/faults"
bench_py check legacy "$LEGACY_URL"

# set_emulator_nice N: every thread of the emulator (setpriority is per thread on Linux) and, since every server
# here runs in its own session and the kernel's autogroup scheduling shares CPU between sessions first, its
# session's autogroup too (otherwise nice only ranks it against its own threads).
set_emulator_nice() {
    renice -n "$1" -p $(ls "/proc/$PID_legacy/task") >/dev/null
    if [[ -w /proc/$PID_legacy/autogroup ]]; then
        echo "$1" >"/proc/$PID_legacy/autogroup" 2>/dev/null || say "cannot set the emulator's autogroup nice"
    fi
}

routing_for() {
    case $1 in
        off) echo bench/routing-price.yaml ;;
        100) echo bench/routing-shadow-100.yaml ;;
        10) echo bench/routing-shadow-10.yaml ;;
    esac
}

for grp in $GROUPS_; do
    w=${grp%%:*} nice_=${grp#*:}
    [[ $grp == *:* ]] || nice_=0
    if [[ $w == 1 ]]; then label="edge (1 worker)"; else label="edge ($w workers)"; fi
    tag=w$w
    if [[ $nice_ != 0 ]]; then label="$label, emulator at nice $nice_"; tag=$tag-n$nice_; fi
    set_emulator_nice "$nice_"
    for conf in off 100 10; do
        name=$tag-$conf
        say "$label, shadow $conf: starting on :$P_EDGE (admin :$P_ADMIN)"
        start_edge "$name" "$(routing_for "$conf")" "$P_EDGE" "$P_ADMIN" "$w" "$LEGACY_URL"
        var="PID_${name//-/_}"
        pid=${!var}
        bench_py check "$name" "http://$HOST:$P_EDGE" --edge
        bench_py measure "$name" "http://$HOST:$P_EDGE" --pid "$pid" --db-pid "$DB_PID" --emulator-pid "$PID_legacy" --emulator-url "$LEGACY_ADMIN_URL" \
            --metrics "http://$HOST:$P_ADMIN/metrics" --label "$label" --group "$label" --shadow "$conf" --workers "$w"
        if [[ $conf == 100 && $BENCH_PROFILE != 0 ]]; then
            bench_py profile "$name-shadow100" "http://$HOST:$P_EDGE" --pid "$pid" --label "$label, shadow 100 %"
        fi
        stop "$name"
        sleep 2  # let the emulator drain shadow calls still in flight
    done
done
set_emulator_nice 0

if [[ $SOAK != 0 ]]; then
    say "soak: fresh 1-worker edge with shadow 100 %, every answer mismatching, $SOAK s"
    start_edge soak bench/routing-shadow-100.yaml "$P_EDGE" "$P_ADMIN" 1 "$LEGACY_URL"
    bench_py check soak "http://$HOST:$P_EDGE" --edge
    bench_py soak "http://$HOST:$P_EDGE" --pid "$PID_soak" --admin "http://$HOST:$P_ADMIN" \
        --emulator "$LEGACY_ADMIN_URL" --seconds "$SOAK" --rate "$SOAK_RATE"
    stop soak
else
    say "BENCH_SHADOW_SOAK=0: skipping the memory soak (the report keeps the last one's figures, with their date)"
fi

bench_py report --kind shadow --results-md "$RESULTS_MD"
