#!/usr/bin/env bash
# `make bench-edge`: the edge's passthrough cost against one nginx worker, on this machine.
#
# Starts (all on 127.0.0.1, all stopped again on exit, Ctrl-C or failure):
#   upstream  :29190  nginx, one worker per CPU, fixed ~300-byte legacy-envelope JSON for any path
#   nginx     :29191  nginx reverse proxy, worker_processes 1, keep-alive pool to the upstream, access log on
#   edge-1w   :29192  shopping-edge, one process (admin :29193), access log on, metrics on
#   edge-2w   :29194  shopping-edge --workers 2 (gunicorn; admin :29195)
# then measures each (bench/edgebench.py): wrk max throughput, hey latency at 1000 req/s, and
# (BENCH_RSS=1, the default) VmRSS of edge-1w after 1,000,000 more requests. Figures go to
# bench/RESULTS.md ("Edge passthrough (make bench-edge)"); raw outputs to bench/out/edge/.
#
# Knobs (environment): BENCH_RSS=0 skips the 1M-request RSS run (it takes minutes);
# BENCH_RSS_REQUESTS (1000000); BENCH_PATH (/shopping/cart?x=1); BENCH_PORT_BASE (29190);
# BENCH_UPSTREAM_WORKERS (nproc); BENCH_STAGGER=0 skips the staggered-hey variant;
# BENCH_WRK_SECONDS (10), BENCH_HEY_SECONDS (15), BENCH_WARMUP_SECONDS (2); BENCH_RESULTS_MD.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
export BENCH_DRIVER=bench/edgebench.py

BENCH_RSS=${BENCH_RSS:-1}
BENCH_RSS_REQUESTS=${BENCH_RSS_REQUESTS:-1000000}
BENCH_PATH=${BENCH_PATH:-/shopping/cart?x=1}
BASE=${BENCH_PORT_BASE:-29190}
UPSTREAM_WORKERS=${BENCH_UPSTREAM_WORKERS:-$(nproc)}
ROUTING=$ROOT/bench/routing-passthrough.yaml
export BENCH_OUT=$ROOT/bench/out/edge

P_UP=$BASE P_NGINX=$((BASE + 1)) P_E1=$((BASE + 2)) P_E1_ADMIN=$((BASE + 3)) P_E2=$((BASE + 4)) P_E2_ADMIN=$((BASE + 5))

need_tools hey nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
install_traps
BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-edge.XXXXXX")  # removed by cleanup
TMP=$BENCH_TMP
chmod 755 "$TMP"  # nginx workers (user nobody when run as root) create their temp dirs in here

render() {  # TEMPLATE OUT KEY=VALUE...
    local tpl=$1 out=$2 kv
    shift 2
    local text
    text=$(<"$tpl")
    for kv in "$@"; do text=${text//@${kv%%=*}@/${kv#*=}}; done
    [[ $text != *@[A-Z_]*@* ]] || die "unrendered placeholder in $tpl"
    printf '%s\n' "$text" >"$out"
}

# ---------------------------------------------------------------- go
rm -rf "$BENCH_OUT"
mkdir -p "$BENCH_OUT"
check_ports "$P_UP" "$P_NGINX" "$P_E1" "$P_E1_ADMIN" "$P_E2" "$P_E2_ADMIN"

render bench/nginx/upstream.conf "$TMP/upstream.conf" \
    "WORKERS=$UPSTREAM_WORKERS" "PREFIX=$TMP" "LISTEN=$HOST:$P_UP"
render bench/nginx/proxy.conf "$TMP/proxy.conf" \
    "PREFIX=$TMP" "LISTEN=$HOST:$P_NGINX" "UPSTREAM=$HOST:$P_UP" "ACCESS_LOG=$BENCH_OUT/nginx-access.log"
for conf in upstream proxy; do
    "$NGINX" -t -q -p "$TMP" -e "$TMP/$conf-error.log" -c "$TMP/$conf.conf" || die "nginx rejected $conf.conf"
done
cp "$TMP/upstream.conf" "$TMP/proxy.conf" "$BENCH_OUT/"

say "starting upstream (nginx x$UPSTREAM_WORKERS) on :$P_UP and nginx proxy (1 worker) on :$P_NGINX"
start upstream "$NGINX" -p "$TMP" -e "$TMP/upstream-error.log" -c "$TMP/upstream.conf"
start nginx "$NGINX" -p "$TMP" -e "$TMP/proxy-error.log" -c "$TMP/proxy.conf"
wait_http upstream "$PID_upstream" "http://$HOST:$P_UP/ping"
wait_http nginx "$PID_nginx" "http://$HOST:$P_NGINX/ping"

say "starting edge (1 process) on :$P_E1 and edge (--workers 2) on :$P_E2, access log on"
start edge-1w env EDGE_LEGACY_URL="http://$HOST:$P_UP" "$EDGE_BIN" --routing "$ROUTING" \
    --host "$HOST" --port "$P_E1" --admin-port "$P_E1_ADMIN"
start edge-2w env EDGE_LEGACY_URL="http://$HOST:$P_UP" "$EDGE_BIN" --routing "$ROUTING" \
    --host "$HOST" --port "$P_E2" --admin-port "$P_E2_ADMIN" --workers 2
wait_http edge-1w "$PID_edge_1w" "http://$HOST:$P_E1_ADMIN/readyz"
wait_http edge-1w "$PID_edge_1w" "http://$HOST:$P_E1/ping"
wait_http edge-2w "$PID_edge_2w" "http://$HOST:$P_E2_ADMIN/readyz"
wait_http edge-2w "$PID_edge_2w" "http://$HOST:$P_E2/ping"

URL_UP="http://$HOST:$P_UP$BENCH_PATH"
URL_NGINX="http://$HOST:$P_NGINX$BENCH_PATH"
URL_E1="http://$HOST:$P_E1$BENCH_PATH"
URL_E2="http://$HOST:$P_E2$BENCH_PATH"
bench_py check upstream "$URL_UP"
bench_py check nginx "$URL_NGINX"
bench_py check edge-1w "$URL_E1" --edge
bench_py check edge-2w "$URL_E2" --edge

body_bytes=$(curl -fsS "$URL_UP" | wc -c)
bench_py facts --path "$BENCH_PATH" --upstream-workers "$UPSTREAM_WORKERS" --body-bytes "$body_bytes"

bench_py measure upstream "$URL_UP" --pid "$PID_upstream" \
    --label "upstream direct (nginx x$UPSTREAM_WORKERS)"
bench_py measure nginx "$URL_NGINX" --pid "$PID_nginx" --upstream-pid "$PID_upstream" \
    --label "nginx proxy (1 worker)"
bench_py measure edge-1w "$URL_E1" --pid "$PID_edge_1w" --upstream-pid "$PID_upstream" \
    --label "edge (1 worker)"
bench_py measure edge-2w "$URL_E2" --pid "$PID_edge_2w" --upstream-pid "$PID_upstream" \
    --label "edge (2 workers)"

if [[ $BENCH_RSS != 0 ]]; then
    stop_group "$PID_edge_2w"  # idle, but no reason to keep it around for minutes
    bench_py rss "$URL_E1" --pid "$PID_edge_1w" \
        --metrics "http://$HOST:$P_E1_ADMIN/metrics" --requests "$BENCH_RSS_REQUESTS"
else
    say "BENCH_RSS=0: skipping the 1,000,000-request RSS run"
fi

bench_py report --results-md "$RESULTS_MD"
