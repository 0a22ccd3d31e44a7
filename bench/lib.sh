#!/usr/bin/env bash
# What every `make bench-*` script shares (sourced, never run): paths, tools from Debian, the servers'
# lifecycle (each in its own session, all stopped on exit, Ctrl-C or failure), the measuring driver run in
# the background so signals reach the trap at once, MariaDB preparation and the edge's start-up.
# The sourcing script sets BENCH_OUT (raw outputs) and BENCH_DRIVER (its measuring script) before use.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PY=${PY:-$ROOT/.venv/bin/python}
EDGE_BIN=$ROOT/.venv/bin/shopping-edge
DB_BIN=$ROOT/.venv/bin/shopping-db
HOST=127.0.0.1
BENCH_DB=${BENCH_DB:-bench_shop}
DB_URL=mysql+aiomysql://root@127.0.0.1:3306/$BENCH_DB
RESULTS_MD=${BENCH_RESULTS_MD:-$ROOT/bench/RESULTS.md}
BENCH_USERS=${BENCH_USERS:-50}
BENCH_PROFILE=${BENCH_PROFILE:-1}

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ -x $PY && -x $EDGE_BIN && -x $DB_BIN ]] || die "no .venv with shopping-edge; run 'make venv'"

# ---------------------------------------------------------------- tools (Debian packages)
# need_tools CMD[:PACKAGE]...: install from Debian what is missing (PACKAGE defaults to CMD; a command found
# in /usr/sbin counts, e.g. nginx for a non-root PATH).
need_tools() {
    local need=() spec cmd
    for spec in wrk curl mysql:mariadb-client "$@"; do
        cmd=${spec%%:*}
        command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || need+=("${spec#*:}")
    done
    if ((${#need[@]})); then
        # shellcheck source=../scripts/apt.sh
        source "$ROOT/scripts/apt.sh"
        apt_ready "${need[*]}" "${need[*]}" "install them by hand"
        # The nginx package may try to start the system nginx; no bench uses or touches it.
        apt_install "bench tools" "${need[@]}"
    fi
}

# ---------------------------------------------------------------- lifecycle
PIDS=()   # each started with setsid: pid == process group id, so the whole tree stops
PYPID=

stop_group() {
    local pid=$1 i
    kill -0 -- "-$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for i in $(seq 100); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    say "process group $pid still up after 10 s, sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
}

# stop NAME: stop one server started with `start` and forget it
stop() {
    local var="PID_${1//-/_}" i
    local pid=${!var:-}
    [[ -n $pid ]] || return 0
    stop_group "$pid"
    for i in "${!PIDS[@]}"; do [[ ${PIDS[i]} != "$pid" ]] || unset 'PIDS[i]'; done
    PIDS=("${PIDS[@]}")
    printf -v "$var" '%s' ""
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM HUP
    [[ -z $PYPID ]] || stop_group "$PYPID"
    if ((${#PIDS[@]})); then
        say "stopping ${#PIDS[@]} servers"
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_group "${PIDS[i]}"; done
    fi
    [[ -z ${BENCH_TMP:-} ]] || rm -rf "$BENCH_TMP"
    ((rc == 0)) || say "failed (exit $rc); logs in ${BENCH_OUT#"$ROOT"/}/"
    exit "$rc"
}

install_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

check_ports() {
    local p
    for p in "$@"; do
        ! port_busy "$p" || die "port $HOST:$p is already in use (set BENCH_PORT_BASE)"
    done
}

# start NAME CMD...: in its own session (Ctrl-C in the terminal reaches only us; cleanup stops the whole
# tree), stdout/stderr to $BENCH_OUT/NAME.{out,err}; sets PID_<NAME>.
start() {
    local name=$1
    shift
    setsid "$@" >"$BENCH_OUT/$name.out" 2>"$BENCH_OUT/$name.err" </dev/null &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_${name//-/_}" '%s' "$pid"
}

# The measuring driver runs in its own process group too, waited for in the background so that a
# signal reaches our trap at once (not after a 15 s wrk) and cleanup can stop it and its wrk.
# BENCH_DRIVER: the measuring script of this bench (bench/pricebench.py, bench/edgebench.py, ...).
bench_py() {
    setsid "$PY" "${BENCH_DRIVER:?}" "$@" &
    PYPID=$!
    wait "$PYPID"
    PYPID=
}

wait_http() {  # NAME PID URL
    local name=$1 pid=$2 url=$3 i
    for i in $(seq 300); do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$BENCH_OUT/$name.err" >&2 || true
            die "$name exited during start-up"
        fi
        sleep 0.1
    done
    tail -n 20 "$BENCH_OUT/$name.err" >&2 || true
    die "$name not answering at $url after 30 s"
}

# ---------------------------------------------------------------- database
DB_PID=
prepare_db() {
    mysql --protocol=tcp -h127.0.0.1 -P3306 -uroot -e 'select 1' >/dev/null 2>&1 \
        || die "MariaDB does not answer on 127.0.0.1:3306 as root (run 'make mariadb')"
    [[ $BENCH_DB =~ ^[A-Za-z0-9_]+$ ]] || die "BENCH_DB=$BENCH_DB is not a plain database name"
    mysql --protocol=tcp -h127.0.0.1 -P3306 -uroot -e "CREATE DATABASE IF NOT EXISTS \`$BENCH_DB\`"
    say "seeding $BENCH_DB with the demo data"
    "$DB_BIN" --db-url "$DB_URL" seed --demo >"$BENCH_OUT/seed.out" 2>&1 || { cat "$BENCH_OUT/seed.out" >&2; die "seed failed"; }
    DB_PID=$(pidof -s mariadbd || pidof -s mysqld || true)
    [[ -n $DB_PID ]] || say "no local mariadbd process found: MariaDB CPU will not be accounted"
}

# start_edge NAME ROUTING PORT ADMIN_PORT WORKERS LEGACY_URL
start_edge() {
    local name=$1 routing=$2 port=$3 admin=$4 workers=$5 legacy=$6
    local args=(--routing "$routing" --host "$HOST" --port "$port" --admin-port "$admin")
    if ((workers > 1)); then args+=(--workers "$workers"); fi
    start "$name" env SHOP_DB_URL="$DB_URL" EDGE_LEGACY_URL="$legacy" "$EDGE_BIN" "${args[@]}"
    local var="PID_${name//-/_}"
    wait_http "$name" "${!var}" "http://$HOST:$admin/readyz"
}
