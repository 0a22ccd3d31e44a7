#!/usr/bin/env python3
"""Measurement half of `make bench-price` and `make bench-shadow` (bench/price.sh and bench/shadow.sh
start and stop the servers; this script only drives load and reads /proc and the admin port).

Subcommands (state in OUT/results.json, OUT = $BENCH_OUT, default bench/out/price):

  workload --users N                  pick N demo users whose selected cart lines are all active SKUs
                                      (shop.seed.demo_rows()), write OUT/requests.tsv for bench/lua/calc_price.lua
  check    NAME URL [--edge]          POST every request of the workload once; fails unless each is 200 with the
                                      legacy envelope (and, through the edge, X-Edge-Route calc_price / Backend new)
  facts    [--db-pid P]               machine, tools, commit, load average
  speed                               bench/pricing_speed.py (the pure pricing function)
  measure  NAME URL --pid P [--db-pid P] [--emulator-pid P] [--emulator-url ADMIN_URL] [--metrics URL]
                                      warm-up, max throughput (wrk -c32, unpaced), latency at a fixed rate
                                      (wrk paced by the Lua delay() hook), CPU accounting per process group
  profile  NAME URL --pid P           py-spy record -f raw of the target (workers included) under the paced load;
                                      top frames by own and by inclusive time
  soak     URL --pid P --admin URL --emulator ADMIN_URL --seconds S
                                      every legacy answer gets a random field (emulator fault knob), shadow-100 load
                                      for S seconds, VmRSS sampled; then GET /_edge/shadow and /metrics
  report   --kind price|shadow [--results-md FILE]
                                      print the tables and refresh that section of bench/RESULTS.md

Helpers for /proc accounting come from bench/edgebench.py (the `make bench-edge` harness).
"""

from __future__ import annotations

import collections

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Self

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

import edgebench as eb  # noqa: E402  (tree, cpu_seconds, machine_busy, children_cpu, status_kb, _cmd_out, _fmt)

OUT = Path(os.environ.get("BENCH_OUT", "bench/out/price"))
RESULTS = OUT / "results.json"
LUA = HERE / "lua" / "calc_price.lua"
CALC_PATH = "/shopping/cal_price/v4_4"

WRK_THREADS = 1
MAX_CONNS = int(os.environ.get("BENCH_MAX_CONNS", "32"))
MAX_SECONDS = int(os.environ.get("BENCH_MAX_SECONDS", "15"))
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "3"))
RATE = int(os.environ.get("BENCH_RATE", "1000"))
PACED_CONNS = int(os.environ.get("BENCH_PACED_CONNS", "32"))
PACED_SECONDS = int(os.environ.get("BENCH_PACED_SECONDS", "20"))
PROFILE_SECONDS = int(os.environ.get("BENCH_PROFILE_SECONDS", "10"))
CURRENCIES = ("USD", "EUR", "GBP", "JPY")
NOISY_CORES = 0.25  # other processes' CPU during a run above which the run is repeated and its verdict flagged
NOISY_RETRIES = int(os.environ.get("BENCH_NOISY_RETRIES", "2"))

PRICE_TARGETS = {"max_rps": 1000.0, "p99_ms": 50.0, "prices_per_s": 20_000.0}
SHADOW_TARGETS = {"p99_ratio": 1.2, "max_ratio": 0.9}


# ---------------------------------------------------------------- state


def load() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {"targets": {}, "order": [], "profiles": {}}


def save(state: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(RESULTS)


def say(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


# ---------------------------------------------------------------- CPU accounting


class Cpu:
    """CPU used during a run by named process groups (each a process and its descendants), by the load
    generator (our children: wrk), and by everything else on the box (the noise floor)."""

    def __init__(self, roots: dict[str, int | None]) -> None:
        self.groups = {name: eb.tree(pid) for name, pid in roots.items() if pid}

    def __enter__(self) -> Self:
        self.t0 = time.monotonic()
        self.c0 = {n: eb.cpu_seconds(p) for n, p in self.groups.items()}
        self.gen0 = eb.children_cpu()
        self.busy0, self.tot0 = eb.machine_busy()
        self.steal0 = _steal_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.used = {n: eb.cpu_seconds(p) - self.c0[n] for n, p in self.groups.items()}
        self.gen = eb.children_cpu() - self.gen0
        busy1, tot1 = eb.machine_busy()
        self.machine = busy1 - self.busy0
        self.ncpu_s = tot1 - self.tot0
        self.foreign = max(0.0, self.machine - sum(self.used.values()) - self.gen)
        self.steal = _steal_seconds() - self.steal0

    def as_dict(self) -> dict:
        w = self.wall or 1.0
        d = {f"{n}_cores": round(v / w, 2) for n, v in self.used.items()}
        d.update({f"{n}_cpu_s": round(v, 3) for n, v in self.used.items()})
        d.update({
            "wall_s": round(self.wall, 2),
            "loadgen_cores": round(self.gen / w, 2),
            "foreign_cores": round(self.foreign / w, 2),
            # CPU the hypervisor gave to other guests while ours wanted it (part of "foreign" above)
            "steal_cores": round(self.steal / w, 2),
            "machine_busy_pct": round(100 * self.machine / (self.ncpu_s or 1.0), 1),
        })
        return d


def _steal_seconds() -> float:
    vals = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(vals[7]) / eb.CLK_TCK if len(vals) > 7 else 0.0


def rss_kb(root: int) -> dict:
    pids = eb.tree(root)
    per = {str(p): eb.status_kb(p, "VmRSS") or 0 for p in pids}
    return {"total_kb": sum(per.values()), "per_pid_kb": per, "hwm_kb": {str(p): eb.status_kb(p, "VmHWM") or 0 for p in pids}}


# ---------------------------------------------------------------- load


def requests_file() -> Path:
    return OUT / "requests.tsv"


def wrk(url: str, *, conns: int, seconds: int, rate: int, log_name: str | None, host: str,
        lua: Path = LUA, env_extra: dict[str, str] | None = None) -> dict:
    """wrk with bench/lua/calc_price.lua (or `lua`, same environment and done() summary); rate 0 = unpaced.
    Returns the Lua done() summary."""
    OUT.mkdir(parents=True, exist_ok=True)
    summary = OUT / f"{log_name or 'wrk-scratch'}.json"
    summary.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_REQUESTS": str(requests_file().resolve()), "BENCH_HOST": host,
           "BENCH_RATE": str(rate), "BENCH_THREADS": str(WRK_THREADS), "BENCH_SUMMARY": str(summary.resolve()),
           **(env_extra or {})}
    cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua), url]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if log_name:
        (OUT / f"{log_name}.txt").write_text(
            f"$ BENCH_RATE={rate} {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0 or not summary.exists():
        raise SystemExit(f"bench: wrk failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    doc = json.loads(summary.read_text())
    if not log_name:
        summary.unlink(missing_ok=True)
    e = doc["errors"]
    doc["non2xx"] = e["status"]
    doc["socket_errors"] = e["connect"] + e["read"] + e["write"] + e["timeout"]
    doc["conns"], doc["offered_rate"], doc["seconds"] = conns, rate, seconds
    return doc


def _port_of(url: str) -> int:
    return int(_host_of(url).rsplit(":", 1)[1])


def conn_split(root: int, port: int) -> str | None:
    """How the client's keep-alive connections are spread over the edge's processes, e.g. '29/3' (per worker,
    largest first): gunicorn workers accept from one shared socket, so the split is whatever the wake-ups gave."""
    try:
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    counts = Counter(int(m) for m in re.findall(r"pid=(\d+)", out))
    pids = eb.tree(root)
    workers = pids[1:] if len(pids) > 1 else pids
    return "/".join(str(n) for n in sorted((counts.get(p, 0) for p in workers), reverse=True)) or None


def _host_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def http_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def http_text(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})?\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
        out.append((labels, float(m.group(2))))
    return out


def shadow_outcomes(metrics_text: str, route: str = "calc_price") -> dict[str, int]:
    c: Counter[str] = Counter()
    for labels, v in metric_samples(metrics_text, "edge_shadow_requests_total"):
        if labels.get("route") == route:
            c[labels.get("outcome", "?")] += int(v)
    return dict(c)


def backends(metrics_text: str, route: str = "calc_price") -> dict[str, int]:
    c: Counter[str] = Counter()
    for labels, v in metric_samples(metrics_text, "edge_requests_total"):
        if labels.get("route") == route:
            c[f"{labels.get('backend')} {labels.get('status_class')}"] += int(v)
    return dict(c)


# ---------------------------------------------------------------- subcommands


def cmd_workload(a: argparse.Namespace) -> None:
    from shop.seed import demo_rows

    rows = demo_rows()
    active = {s["id"]: s["active"] for s in rows["skus"]}
    lines: dict[int, list[int]] = defaultdict(list)
    for c in rows["cart_items"]:
        if c["selected"]:
            lines[c["user_id"]].append(c["sku_id"])
    address_user = {ad["id"]: ad["user_id"] for ad in rows["addresses"]}
    users = [u for u in sorted(lines) if lines[u] and all(active.get(s) for s in lines[u])][: a.users]
    if len(users) < a.users:
        raise SystemExit(f"bench: only {len(users)} demo users have an all-active selected cart")
    bad = [u for u in users if address_user.get(u) != u]
    if bad:
        raise SystemExit(f"bench: demo users {bad[:5]} do not own address id == user id")
    OUT.mkdir(parents=True, exist_ok=True)
    with requests_file().open("w") as f:
        for k, u in enumerate(users):
            body = {"address_id": u, "currency": CURRENCIES[k % len(CURRENCIES)], "use_wallet": True}
            f.write(f"{u}\t{json.dumps(body, separators=(',', ':'))}\n")
    sizes = [len(lines[u]) for u in users]
    state = load()
    state["workload"] = {
        "users": users, "n": len(users), "skipped": [u for u in range(1, users[-1] + 1) if u not in set(users)],
        "lines_min": min(sizes), "lines_max": max(sizes), "lines_mean": round(statistics.mean(sizes), 2),
        "lines_hist": dict(sorted(Counter(sizes).items())),
    }
    save(state)
    say(f"workload: {len(users)} users ({users[0]}..{users[-1]}), {min(sizes)}-{max(sizes)} selected lines "
        f"(mean {statistics.mean(sizes):.1f}), currencies {'/'.join(CURRENCIES)} → {requests_file()}")


def cmd_check(a: argparse.Namespace) -> None:
    sizes = []
    for line in requests_file().read_text().splitlines():
        user, body = line.split("\t", 1)
        req = urllib.request.Request(a.url.rstrip("/") + CALC_PATH, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-User-Id": user})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw, status, headers = r.read(), r.status, r.headers
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"bench: {a.name}: user {user}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        doc = json.loads(raw)
        if status != 200 or doc.get("code") != 0 or "summary" not in (doc.get("data") or {}):
            raise SystemExit(f"bench: {a.name}: user {user}: not a priced cart: {raw[:300]!r}")
        if a.edge and (headers.get("X-Edge-Route") != "calc_price" or headers.get("X-Edge-Backend") != "new"):
            raise SystemExit(f"bench: {a.name}: user {user}: route={headers.get('X-Edge-Route')} "
                             f"backend={headers.get('X-Edge-Backend')} (want calc_price / new)")
        sizes.append(len(raw))
    state = load()
    state.setdefault("body_bytes", {})[a.name] = round(statistics.mean(sizes))
    save(state)
    say(f"{a.name} ok: {len(sizes)} users priced, mean body {statistics.mean(sizes):.0f} bytes")


def cmd_facts(a: argparse.Namespace) -> None:
    state = load()
    mariadb_v = eb._cmd_out(["mysql", "-uroot", "-h127.0.0.1", "-N", "-e", "select version()"])
    v = eb.pkg_version
    state["facts"] = {
        **eb.machine_facts(["proxy", "handlers", "shop", "shadow", "emulators"]),
        "mariadb": mariadb_v.splitlines()[-1] if mariadb_v else "?",
        "tools": (f"wrk {eb.wrk_version()} (LuaJIT), Python {platform.python_version()}, aiohttp {v('aiohttp')}, "
                  f"uvloop {v('uvloop')}, gunicorn {v('gunicorn')}, SQLAlchemy {v('sqlalchemy')}, "
                  f"aiomysql {v('aiomysql')}, py-spy {v('py-spy')}"),
    }
    save(state)


def cmd_speed(a: argparse.Namespace) -> None:
    script = str(HERE / "pricing_speed.py")
    with Cpu({}) as cw:
        proc = subprocess.run([sys.executable, script], capture_output=True, text=True, check=False)
    (OUT / "pricing_speed.txt").write_text(proc.stdout + proc.stderr)
    m = re.search(r"pricing: ([\d,]+) prices/s", proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"bench: pricing_speed.py failed: {proc.stdout}{proc.stderr}")
    state = load()
    cpu_rate = re.search(r"([\d,]+) per CPU-second", proc.stdout)
    state["speed"] = {"prices_per_s": int(m.group(1).replace(",", "")), "line": proc.stdout.strip(), "cpu": cw.as_dict(),
                      "per_cpu_second": int(cpu_rate.group(1).replace(",", "")) if cpu_rate else None}
    say(proc.stdout.strip() + f" (other load on the box meanwhile: {cw.as_dict()['foreign_cores']} cores)")
    if a.profile:
        raw = OUT / "pyspy-pricing.txt"
        spy = ROOT / ".venv" / "bin" / "py-spy"
        p = subprocess.run([str(spy), "record", "-f", "raw", "-o", str(raw), "--", sys.executable, script],
                           capture_output=True, text=True, check=False)
        if p.returncode == 0 and raw.exists():
            prof = summarise_raw(raw.read_text())
            prof.update(label="pure pricing function (bench/pricing_speed.py)", rate=None, cores=1.0, pids=1)
            state.setdefault("profiles", {})["pricing"] = prof
            say("pricing: top own: " + ", ".join(f"{k} {v}%" for k, v in prof["own"][:6]))
        else:
            say(f"pricing: py-spy failed ({p.returncode}): {p.stderr.strip()[-300:]}")
    save(state)


def cmd_measure(a: argparse.Namespace) -> None:
    state = load()
    name, host = a.name, _host_of(a.url)
    roots = {"target": a.pid, "mariadb": a.db_pid, "emulator": a.emulator_pid}
    metrics0 = http_text(a.metrics) if a.metrics else None

    say(f"{name}: warm-up {WARMUP_SECONDS}s (wrk -c{MAX_CONNS})")
    wrk(a.url, conns=MAX_CONNS, seconds=WARMUP_SECONDS, rate=0, log_name=None, host=host)
    rss_before = rss_kb(a.pid)

    def run(kind: str, conns: int, seconds: int, rate: int) -> dict:
        """One wrk run with CPU accounting; repeated (up to BENCH_NOISY_RETRIES times) while other processes on the
        box used more than NOISY_CORES meanwhile; the least disturbed attempt is kept."""
        best: dict | None = None
        for attempt in range(1 + NOISY_RETRIES):
            if attempt:
                say(f"{name}: other processes used {best['cpu']['foreign_cores']} cores during that run; repeating it "
                    f"(attempt {attempt + 1} of {1 + NOISY_RETRIES})")
                time.sleep(2)
            m_before = http_text(a.metrics) if a.metrics else None
            e_before = _legacy_calls(a.emulator_url)
            split: list[str | None] = []
            timer = threading.Timer(min(3.0, seconds / 2), lambda: split.append(conn_split(a.pid, _port_of(a.url))))
            timer.start()
            with Cpu(roots) as cw:
                r = wrk(a.url, conns=conns, seconds=seconds, rate=rate, log_name=f"wrk-{kind}-{name}", host=host)
            timer.cancel()
            r["conn_split"] = split[0] if split else None
            m_after = http_text(a.metrics) if a.metrics else None
            r["cpu"] = cw.as_dict()
            if e_before is not None:
                r["legacy_calls"] = (_legacy_calls(a.emulator_url) or 0) - e_before
            if m_before is not None and m_after is not None:
                r["shadow"] = _delta(shadow_outcomes(m_before), shadow_outcomes(m_after))
            r["attempt"] = attempt + 1
            r["foreign_by_attempt"] = [*(best or {}).get("foreign_by_attempt", []), r["cpu"]["foreign_cores"]]
            if best is None or r["cpu"]["foreign_cores"] < best["cpu"]["foreign_cores"]:
                best = r
            else:
                best["foreign_by_attempt"] = r["foreign_by_attempt"]
            if r["cpu"]["foreign_cores"] <= NOISY_CORES:
                break
        assert best is not None
        return best

    say(f"{name}: max throughput, wrk -t{WRK_THREADS} -c{MAX_CONNS} -d{MAX_SECONDS}s")
    w = run("max", MAX_CONNS, MAX_SECONDS, 0)
    cw_used = w["cpu"]
    w["target_us_per_req"] = round(1e6 * cw_used["target_cpu_s"] / w["requests"], 1) if w["requests"] else None
    if "mariadb_cpu_s" in cw_used and w["requests"]:
        w["mariadb_us_per_req"] = round(1e6 * cw_used["mariadb_cpu_s"] / w["requests"], 1)
    say(f"{name}: {w['rate']:.0f} req/s, p99 {w['latency_ms']['p99']:.1f} ms, non-2xx {w['non2xx']}, "
        f"target {w['cpu']['target_cores']} cores, others on the box {w['cpu']['foreign_cores']} cores")

    time.sleep(1)
    say(f"{name}: latency at {RATE} req/s, wrk -t{WRK_THREADS} -c{PACED_CONNS} -d{PACED_SECONDS}s paced by delay()")
    p = run("paced", PACED_CONNS, PACED_SECONDS, RATE)
    lat = p["latency_ms"]
    say(f"{name}: {p['rate']:.0f} req/s achieved, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
        f"p99.9 {lat['p999']:.1f} ms, non-2xx {p['non2xx']}")
    if a.metrics:
        time.sleep(1)
        text = http_text(a.metrics)
        totals = {"backends": _delta(backends(metrics0 or ""), backends(text)),
                  "shadow": _delta(shadow_outcomes(metrics0 or ""), shadow_outcomes(text))}
    else:
        totals = {}
    state["targets"][name] = {
        "label": a.label or name, "url": a.url, "group": a.group, "shadow": a.shadow, "workers": a.workers,
        "pids": eb.tree(a.pid), "max": w, "paced": p, "rss_before": rss_before, "rss_after": rss_kb(a.pid),
        "metrics": totals,
    }
    if name not in state["order"]:
        state["order"].append(name)
    save(state)


def _legacy_calls(emulator_url: str | None) -> int | None:
    """calc_price requests the emulator has received so far (its /_emulator/stats, on its loopback control port)."""
    if not emulator_url:
        return None
    try:
        return int(http_json(emulator_url.rstrip("/") + "/_emulator/stats").get("paths", {}).get(CALC_PATH, 0))
    except (OSError, ValueError):
        return None


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after)) if after.get(k, 0) - before.get(k, 0)}


# ---------------------------------------------------------------- profile


# Frames under which every request of a process runs (process start-up, gunicorn, the loop runner, pool threads).
_SCAFFOLD = re.compile(
    r"^(main \(proxy/cli\.py\)|_run_gunicorn |run_app |Arbiter\.|BaseApplication\.run|Application\.run \(gunicorn|"
    r"(Gunicorn\w*Worker|Worker)\.(run|init_process) |Runner\.run |run \(asyncio|_run_module_as_main|_run_code|"
    r"Thread\.(run|_bootstrap)|_bootstrap|<module>)"
)
_IDLE = re.compile(r"^(_worker \(concurrent/futures/thread\.py\)|Condition\.wait |Event\.wait |_wait_for_tstate_lock )")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise_raw(text: str, top: int = 14) -> dict:
    """py-spy -f raw (collapsed stacks: 'frame;frame;... count') → shares by own and inclusive time.

    py-spy's "process N" root frames are dropped; frames present in ≥ 95 % of the samples (the event loop's
    scaffolding: main, run_app, worker start-up) are left out of the inclusive lists."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        keys = []
        for frame in stack.split(";"):
            frame = frame.strip()
            if frame.startswith("process ") or not frame:
                continue
            m = _FRAME.match(frame)
            keys.append(f"{m.group('func')} ({_short(m.group('file'))})" if m else frame)
        if not keys:
            keys = ["(no Python frame)"]
        if _IDLE.match(keys[-1]):
            idle += n  # a pool thread waiting for work: py-spy's idle detection misses lock waits
            continue
        total += n
        own[keys[-1]] += n
        for k in set(keys):
            incl[k] += n
    ours = ("proxy/", "handlers/", "shop/", "shadow/", "emulators/")

    def mine(k: str) -> bool:
        return any(f"({o}" in k for o in ours)

    def rows(c: Counter[str], pred: Any = lambda k: True, inclusive: bool = True) -> list[list]:
        if not total:
            return []
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common()
                if pred(k) and (not inclusive or (v < 0.95 * total and not _SCAFFOLD.match(k)))][:top]

    return {
        "samples": total,
        "idle_thread_samples": idle,
        "own": rows(own, inclusive=False),
        "inclusive_ours": rows(incl, mine),
        "inclusive_libs": rows(incl, lambda k: not mine(k) and "<module>" not in k),
    }


def _spy(pids: list[int], raw: Path, seconds: int, extra: list[str] | None = None) -> tuple[int, str]:
    """`py-spy record -p PID -d S -f raw` for each pid at once (the brief's command; blocking sampling at py-spy's
    default 100 Hz); the raw outputs are concatenated into `raw`."""
    spy = ROOT / ".venv" / "bin" / "py-spy"
    procs = []
    for pid in pids:
        part = raw.with_suffix(f".{pid}.txt")
        procs.append((part, subprocess.Popen([str(spy), "record", "-p", str(pid), "-d", str(seconds), "-f", "raw",
                                              "-o", str(part), *(extra or [])],
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    rc, logs, parts = 0, [], []
    for part, proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        logs.append(out)
        rc = rc or proc.returncode
        if part.exists():
            parts.append(part.read_text())
            part.unlink()
    raw.write_text("".join(parts))
    return rc, "\n".join(logs)


def cmd_profile(a: argparse.Namespace) -> None:
    state = load()
    raw = OUT / f"pyspy-{a.name}.txt"
    host = _host_of(a.url)
    env = {**os.environ, "BENCH_REQUESTS": str(requests_file().resolve()), "BENCH_HOST": host,
           "BENCH_RATE": str(a.rate), "BENCH_THREADS": "1"}
    load_s = PROFILE_SECONDS + 5
    conns = PACED_CONNS if a.rate else MAX_CONNS
    group = eb.tree(a.pid)
    pids = group[1:] if len(group) > 1 else group  # gunicorn: its workers, not the idle arbiter
    say(f"{a.name}: py-spy record -p {','.join(map(str, pids))} -d {PROFILE_SECONDS} -f raw "
        f"under {'%d req/s' % a.rate if a.rate else 'unpaced wrk -c%d' % conns}")
    gen = subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{load_s}s", "--timeout", "5s", "-s", str(LUA), a.url],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        cpu0 = eb.cpu_seconds(group)
        t0 = time.monotonic()
        rc, log = _spy(pids, raw, PROFILE_SECONDS)
        cores = (eb.cpu_seconds(group) - cpu0) / (time.monotonic() - t0)
    finally:
        out, _ = gen.communicate(timeout=load_s + 60)
    (OUT / f"pyspy-{a.name}.log").write_text(log + "\n--- load ---\n" + out)
    if rc != 0 or not raw.read_text().strip():
        say(f"{a.name}: py-spy failed ({rc}): {log.strip()[-300:]}")
        return
    s = summarise_raw(raw.read_text())
    s.update(cores=round(cores, 2), rate=a.rate, label=a.label or a.name, pids=len(pids))
    state.setdefault("profiles", {})[a.name] = s
    save(state)
    say(f"{a.name}: {s['samples']} samples; top own: " + ", ".join(f"{k} {v}%" for k, v in s["own"][:5]))


# ---------------------------------------------------------------- soak


def cmd_soak(a: argparse.Namespace) -> None:
    state = load()
    host = _host_of(a.url)
    fault = {"path": CALC_PATH, "random_field": "quote_time"}
    http_json(a.emulator.rstrip("/") + "/_emulator/faults", method="POST", body=fault)
    say(f"soak: emulator fault set {fault}: every legacy calc_price answer gets a random data.quote_time")
    interval = a.interval if a.seconds >= 6 * a.interval else max(5, a.seconds // 6)
    warm = min(120, a.seconds // 3)
    env = {**os.environ, "BENCH_REQUESTS": str(requests_file().resolve()), "BENCH_HOST": host,
           "BENCH_RATE": str(a.rate), "BENCH_THREADS": "1", "BENCH_SUMMARY": str((OUT / "wrk-soak.json").resolve())}
    conns = PACED_CONNS if a.rate else MAX_CONNS
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{a.seconds}s", "--timeout", "5s", "-s", str(LUA), a.url]
    samples = []
    metrics_url, shadow_url = a.admin.rstrip("/") + "/metrics", a.admin.rstrip("/") + "/_edge/shadow"

    def sample(t: float) -> dict:
        r = rss_kb(a.pid)
        s: dict[str, Any] = {"t_s": round(t), "rss_kb": r["total_kb"], "per_pid_kb": r["per_pid_kb"]}
        try:
            text = http_text(metrics_url)
            s["shadow"] = shadow_outcomes(text)
            s["requests"] = sum(backends(text).values())
            rep = http_json(shadow_url + "?format=json")
            s["store"] = rep.get("store")
            s["worker"] = (rep.get("meta") or {}).get("worker")
        except (OSError, ValueError) as exc:
            s["error"] = repr(exc)
        return s

    say(f"soak: {' '.join(cmd)} (BENCH_RATE={a.rate or 'unpaced'}), VmRSS every {interval} s")
    samples.append(sample(0))
    t0 = time.monotonic()
    with (OUT / "wrk-soak.txt").open("w") as log:
        gen = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            nxt = interval
            while gen.poll() is None:
                time.sleep(max(0.0, min(1.0, t0 + nxt - time.monotonic())))
                if time.monotonic() - t0 >= nxt and gen.poll() is None:
                    s = sample(time.monotonic() - t0)
                    samples.append(s)
                    nxt += interval
                    say(f"soak: t={s['t_s']:>4}s VmRSS {s['rss_kb'] / 1024:.1f} MB, shadow {s.get('shadow')}, "
                        f"store {(s.get('store') or {}).get('bytes_used')} B, "
                        f"queue {(s.get('worker') or {}).get('queue_depth')}")
        finally:
            if gen.poll() is None:
                gen.send_signal(signal.SIGTERM)
            gen.wait()
    time.sleep(2)
    end = sample(time.monotonic() - t0)
    samples.append(end)
    report = http_json(shadow_url + "?format=json")
    (OUT / "shadow-report.json").write_text(json.dumps(report, indent=2))
    metrics_text = http_text(metrics_url)
    (OUT / "metrics-after-soak.txt").write_text(metrics_text)
    http_json(a.emulator.rstrip("/") + "/_emulator/faults", method="DELETE")
    wsum = json.loads((OUT / "wrk-soak.json").read_text()) if (OUT / "wrk-soak.json").exists() else {}
    route = (report.get("routes") or {}).get("calc_price") or {}
    fields = [{k: f.get(k) for k in ("field", "mismatches", "noise", "verdict")} | {"examples": len(f.get("examples") or [])}
              for f in route.get("fields", [])]
    rss_vals = [s["rss_kb"] for s in samples]
    base = next((s for s in samples if s["t_s"] >= warm), samples[0])
    after = [s["rss_kb"] for s in samples if s["t_s"] >= base["t_s"]]
    growth = max(after) - base["rss_kb"]
    limit = max(4 * 1024, base["rss_kb"] * 0.05)
    state["soak"] = {
        "seconds": a.seconds, "interval": interval, "warmup_s": base["t_s"], "rate": a.rate, "conns": conns,
        "wrk": wsum, "samples": samples,
        "rss_start_kb": rss_vals[0], "rss_max_kb": max(rss_vals), "rss_end_kb": rss_vals[-1],
        "rss_base_kb": base["rss_kb"], "growth_after_warmup_kb": growth, "bounded_limit_kb": round(limit),
        "bounded": growth <= limit,
        "hwm_kb": rss_kb(a.pid)["hwm_kb"],
        "report": {"requests": route.get("requests"), "compared": route.get("compared"),
                   "noise_samples": route.get("noise_samples"), "fields": fields,
                   "store": report.get("store"), "meta": report.get("meta"), "rule": report.get("rule")},
        "metrics": {
            "edge_shadow_requests_total": {l_.get("outcome"): int(v) for l_, v in metric_samples(metrics_text, "edge_shadow_requests_total")
                                           if l_.get("route") == "calc_price"},
            # One series per (field, size): rounding and beyond summed per field.
            "edge_shadow_mismatch_fields_total": dict(sum((collections.Counter({l_.get("field"): int(v)}) for l_, v in
                                                           metric_samples(metrics_text, "edge_shadow_mismatch_fields_total")
                                                           if l_.get("route") == "calc_price"), collections.Counter())),
            "edge_shadow_noise_fields_total": {l_.get("field"): int(v) for l_, v in
                                               metric_samples(metrics_text, "edge_shadow_noise_fields_total")
                                               if l_.get("route") == "calc_price"},
            "edge_shadow_inflight": sum(v for _, v in metric_samples(metrics_text, "edge_shadow_inflight")),
        },
    }
    save(state)
    say(f"soak: VmRSS start {rss_vals[0] / 1024:.1f} MB, max {max(rss_vals) / 1024:.1f} MB, end {rss_vals[-1] / 1024:.1f} MB; "
        f"after warm-up (t={base['t_s']} s, {base['rss_kb'] / 1024:.1f} MB) grew {growth / 1024:.1f} MB → "
        f"{'bounded' if growth <= limit else 'NOT bounded'}")
    say(f"soak: /_edge/shadow calc_price requests {route.get('requests')}, meta {report.get('meta')}")


# ---------------------------------------------------------------- report


def _f(v: float | None, nd: int = 1) -> str:
    return eb._fmt(v, nd)


def _split_note(w: dict, p: dict) -> str:
    """' (conns 29/3, 20/12)' for multi-worker runs: client connections per worker in the max and paced runs."""
    a_, b_ = w.get("conn_split") or "", p.get("conn_split") or ""
    return f" (conns {a_ or '?'}, {b_ or '?'})" if "/" in a_ + b_ else ""


def _other(cpu: dict) -> str:
    """'0.20' or '0.20 (steal 0.05)': other processes' CPU, and how much of it the hypervisor stole."""
    st = cpu.get("steal_cores") or 0.0
    return f"{cpu.get('foreign_cores', 0):.2f}" + (f" (steal {st:.2f})" if st >= 0.01 else "")


def _noise_note(*cpus: dict) -> str:
    worst = max((c.get("foreign_cores") or 0.0) for c in cpus)
    return f" — noisy: other processes used up to {worst:.2f} cores meanwhile" if worst > NOISY_CORES else ""


def _verdict(value: float | None, limit: float, higher_is_better: bool, unit: str = "", nd: int = 2) -> str:
    if value is None:
        return "not measured"
    ok = value >= limit if higher_is_better else value <= limit
    v = f"{value:,.{nd}f}{unit}"
    if ok:
        return f"**met** ({v} {'≥' if higher_is_better else '≤'} {limit:,g}{unit})"
    if higher_is_better:
        return (f"**missed** ({v} vs ≥ {limit:,g}{unit}: short by {limit - value:,.{nd}f}{unit}, "
                f"{100 * (limit - value) / limit:.0f} % below; needs {limit / value:.2f}×)" if value else f"**missed** ({v})")
    return (f"**missed** ({v} vs ≤ {limit:,g}{unit}: over by {value - limit:,.{nd}f}{unit}, "
            f"{value / limit:.2f}× the limit)")


def _profile_lines(state: dict, names: list[str]) -> list[str]:
    out = []
    for name in names:
        p = state.get("profiles", {}).get(name)
        if not p:
            continue
        if name == "pricing":
            how = "the whole script (warm-up and timing loops)"
        else:
            how = (f"{p['rate']} req/s paced" if p.get("rate") else "unpaced wrk")
            how = f"under {how}, {p.get('pids', 1)} process(es) sampled, target used {p.get('cores', 0):.2f} cores meanwhile"
        out.append(f"- **{p['label']}**, {how}: {p['samples']:,} samples (100 Hz, idle excluded"
                   f"{'; %d more of the diff thread waiting for work left out' % p['idle_thread_samples'] if p.get('idle_thread_samples') else ''}). "
                   + ("Own time: " if name == "pricing" else
                      "Own time (`run_app` / `GunicornWebWorker.run` own = uvloop's C event loop: socket I/O and callbacks): ")
                   + "; ".join(f"`{k}` {v} %" for k, v in p["own"][:10]) + ".")
        out.append("  Inclusive, our code: " + "; ".join(f"`{k}` {v} %" for k, v in p["inclusive_ours"][:12]) + ".")
        out.append("  Inclusive, libraries: " + "; ".join(f"`{k}` {v} %" for k, v in p["inclusive_libs"][:10]) + ".")
    return out


def _facts_block(f: dict, out_dir: str) -> str:
    return (f"Last run: **{f.get('date')}** on this machine: {f.get('nproc')} CPUs ({f.get('cpu_model')}), "
            f"{f.get('mem')} RAM, kernel {f.get('kernel')}; load average before the run {f.get('loadavg')}.\n"
            f"Code: commit {f.get('commit')}"
            f"{' (* = with uncommitted changes in proxy/, handlers/, shop/, shadow/ or emulators/)' if f.get('dirty') else ''}.\n"
            f"Database: MariaDB {f.get('mariadb')} on 127.0.0.1:3306 (the box's shared server; other sessions' tests use it too).\n"
            f"Tools: {f.get('tools')}.\n"
            f"Raw outputs of the last run: `{out_dir}` (gitignored).")


def _workload_block(state: dict) -> str:
    w = state.get("workload", {})
    hist = ", ".join(f"{k} line{'s' if int(k) > 1 else ''}: {v}" for k, v in w.get("lines_hist", {}).items())
    body = next((v for k, v in state.get("body_bytes", {}).items() if k != "legacy"), None)
    return (f"- **Requests**: `POST /shopping/cal_price/v4_4` (no `items`: the caller's selected cart lines are priced), "
            f"body `{{\"address_id\": <user id>, \"currency\": <USD/EUR/GBP/JPY in turn>, \"use_wallet\": true}}`, "
            f"header `X-User-Id: <user id>`, keep-alive, from 127.0.0.1. {w.get('n')} distinct demo users: ids "
            f"{w.get('users', [0])[0]}..{w.get('users', [0])[-1]} minus the {len(w.get('skipped', []))} whose selected cart has an "
            f"inactive SKU (sku_unavailable) ({', '.join(map(str, w.get('skipped', [])))}); selected lines per cart "
            f"{w.get('lines_min')}–{w.get('lines_max')}, mean {w.get('lines_mean')} ({hist}). Regions from the address "
            f"(US/DE/GB/JP). Mean response {body} bytes. Each of the {w.get('n')} requests is checked once (200, priced, "
            f"served by the new side) before any load.")


LOAD_BLOCK = f"""- **Load generator**: `wrk -t1` with `bench/lua/calc_price.lua` (the {{n}} requests above, in turn; Host header set
  in the script). Warm-up `-c{MAX_CONNS} -d{WARMUP_SECONDS}s`, then **max throughput** `wrk -t1 -c{MAX_CONNS} -d{MAX_SECONDS}s` (unpaced,
  closed loop), then **latency at {RATE} req/s**: `wrk -t1 -c{PACED_CONNS} -d{PACED_SECONDS}s` paced by the script's `delay()` hook.
  wrk has no rate option; the hook keeps one schedule of send slots 1 ms apart on the monotonic clock (LuaJIT ffi
  `clock_gettime`) and each connection, when free, takes the next slot and waits for it, so the offered load is a
  smooth open-loop {RATE} req/s independent of response times (as long as one of the {PACED_CONNS} connections is free when a
  slot comes; otherwise the achieved rate, reported, falls short). Latency is wrk's own histogram (write of the
  request → last byte of the response), p50/p99/p99.9 from its `done()` hook. Chosen over 10 × `hey -q 100`: one
  process, all users (hey sends one body), and no 10-request bursts every 10 ms (see the bench-edge notes on
  hey's synchronised tickers); wrk timers have 1 ms resolution, so a request leaves within ~1 ms of its slot.
- **CPU**: utime+stime from /proc during each run, per process group (edge: all its processes; MariaDB: `mariadbd`;
  emulator), / wall time. "other load" = busy CPU of the whole box (/proc/stat) minus the bench's processes and wrk:
  the noise floor on this shared machine; "steal" is the part of it the hypervisor gave to other guests (this box is
  a VM). A run during which other processes used more than {{noisy}} cores is repeated (up to {{retries}} more times,
  `BENCH_NOISY_RETRIES`) and the least disturbed attempt kept; a verdict is still marked "noisy" when even that one
  was. MariaDB's figure includes any other session's queries meanwhile. Nothing is pinned: wrk, edge, MariaDB (and the
  emulator) share the {{nproc}} CPUs."""


PRICE_SECTION = "## calc_price through the edge (make bench-price)"
SHADOW_SECTION = "## Shadow mode: calc_price (make bench-shadow)"


def report_price(state: dict) -> tuple[str, str, list[str]]:
    t = state["targets"]
    rows = ["| edge | max req/s (wrk -c32) | edge CPU | edge CPU µs/req | MariaDB CPU (µs/req) | p50 / p99 / p99.9 ms @ 1000 req/s "
            "| achieved rate | client connections per worker (max / paced run) | non-2xx / socket errors "
            "| other load on box (max / paced run) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in state["order"]:
        r = t[name]
        w, p = r["max"], r["paced"]
        lat = p["latency_ms"]
        rows.append(
            f"| {r['label']} | {w['rate']:,.0f} | {w['cpu']['target_cores']:.2f} cores | {_f(w.get('target_us_per_req'), 0)} "
            f"| {w['cpu'].get('mariadb_cores', 0):.2f} cores ({_f(w.get('mariadb_us_per_req'), 0)}) "
            f"| {lat['p50']:.1f} / {lat['p99']:.1f} / {lat['p999']:.1f} | {p['rate']:,.0f} req/s "
            f"| {w.get('conn_split') or '—'} / {p.get('conn_split') or '—'} "
            f"| {w['non2xx'] + p['non2xx']} / {w['socket_errors'] + p['socket_errors']} "
            f"| {_other(w['cpu'])} / {_other(p['cpu'])} cores |")
    verdicts = ["| target | wanted | measured | verdict |", "|---|---:|---:|---|"]
    for name in state["order"]:
        r = t[name]
        w, p = r["max"], r["paced"]
        verdicts.append(f"| {r['label']}: max throughput | ≥ 1,000 req/s, 0 non-2xx | {w['rate']:,.0f} req/s, {w['non2xx']} non-2xx "
                        f"| {_verdict(w['rate'], PRICE_TARGETS['max_rps'], True, ' req/s', 0)}"
                        f"{'' if w['non2xx'] == 0 else ' — **non-2xx answers**'}{_noise_note(w['cpu'])} |")
        short = p["rate"] < 0.97 * RATE
        verdicts.append(f"| {r['label']}: p99 at 1000 req/s | ≤ 50 ms | {p['latency_ms']['p99']:.1f} ms at {p['rate']:,.0f} req/s "
                        f"| {_verdict(p['latency_ms']['p99'], PRICE_TARGETS['p99_ms'], False, ' ms', 1)}"
                        f"{' — **rate not reached**: the edge could not take 1000 req/s, so this p99 is at a lower rate' if short else ''}"
                        f"{'' if p['non2xx'] == 0 else ' — **non-2xx answers**'}{_noise_note(p['cpu'])} |")
    sp = state.get("speed")
    if sp:
        cpu_s = f" ({sp['per_cpu_second']:,} per CPU-second)" if sp.get("per_cpu_second") else ""
        verdicts.append(f"| pure pricing function, 5-line cart (wall clock) | ≥ 20,000 prices/s | {sp['prices_per_s']:,} prices/s{cpu_s} "
                        f"| {_verdict(sp['prices_per_s'], PRICE_TARGETS['prices_per_s'], True, '/s', 0)}"
                        f"{_noise_note(sp['cpu']) if sp.get('cpu') else ''} |")
    notes = []
    for name in state["order"]:
        r = t[name]
        w = r["max"]
        c = w["cpu"]
        notes.append(f"- {r['label']} at max: edge {c['target_cores']:.2f} cores, MariaDB {c.get('mariadb_cores', 0):.2f}, wrk "
                     f"{c['loadgen_cores']:.2f}, others {c['foreign_cores']:.2f}; box {c['machine_busy_pct']:.0f} % busy. "
                     f"VmRSS {sum(r['rss_after']['per_pid_kb'].values()) / 1024:.1f} MB after the runs "
                     f"({len(r['pids'])} process{'es' if len(r['pids']) > 1 else ''}). "
                     f"Edge counters during the runs: {r.get('metrics', {}).get('backends')}.")
    e1, e2 = t.get("edge-1w"), t.get("edge-2w")
    if e1 and e2:
        notes.append(f"- 2 workers vs 1: {e2['max']['rate'] / e1['max']['rate']:.2f}× the throughput.")
    if sp:
        notes.append(f"- `bench/pricing_speed.py`: {sp['line']} Other load on the box meanwhile: "
                     f"{(sp.get('cpu') or {}).get('foreign_cores', 0):.2f} cores.")
    return "\n".join(rows), "\n".join(verdicts), notes


def report_shadow(state: dict) -> tuple[str, str, list[str]]:
    t = state["targets"]
    rows = ["| edge | shadow | max req/s (wrk -c32) | vs off | p50 / p99 / p99.9 ms @ 1000 req/s | achieved rate | p99 vs off "
            "| CPU edge / emulator / MariaDB (paced run) | shadow outcomes in the paced run | non-2xx | other load (max / paced) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    verdicts = ["| target | wanted | measured | verdict |", "|---|---:|---:|---|"]
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for name in state["order"]:
        r = t[name]
        groups[r["group"]][r["shadow"]] = r
    for g, confs in groups.items():
        off = confs.get("off")
        for key in ("off", "100", "10"):
            r = confs.get(key)
            if not r:
                continue
            w, p = r["max"], r["paced"]
            lat, c = p["latency_ms"], p["cpu"]
            vs = f"{w['rate'] / off['max']['rate']:.2f}" if off and key != "off" else "—"
            pv = f"{lat['p99'] / off['paced']['latency_ms']['p99']:.2f}" if off and key != "off" else "—"
            outc = p.get("shadow") or {}
            rows.append(
                f"| {r['label']} | {'off' if key == 'off' else key + ' %'}{_split_note(w, p)} | {w['rate']:,.0f} | {vs} "
                f"| {lat['p50']:.1f} / {lat['p99']:.1f} / {lat['p999']:.1f} | {p['rate']:,.0f} | {pv} "
                f"| {c['target_cores']:.2f} / {c.get('emulator_cores', 0):.2f} / {c.get('mariadb_cores', 0):.2f} "
                f"| {', '.join(f'{k} {v:,}' for k, v in outc.items()) or '—'} | {w['non2xx'] + p['non2xx']} "
                f"| {_other(w['cpu'])} / {_other(c)} |")
        if off and confs.get("100"):
            r = confs["100"]
            ratio = r["paced"]["latency_ms"]["p99"] / off["paced"]["latency_ms"]["p99"]
            short = min(r["paced"]["rate"], off["paced"]["rate"]) < 0.97 * RATE
            verdicts.append(
                f"| {'(diagnostic) ' if 'nice' in g else ''}{g}: client p99 at 1000 req/s, shadow 100 % / shadow off | ≤ 1.2 | {ratio:.2f} "
                f"({r['paced']['latency_ms']['p99']:.1f} / {off['paced']['latency_ms']['p99']:.1f} ms) "
                f"| {_verdict(ratio, SHADOW_TARGETS['p99_ratio'], False)}"
                f"{' — **1000 req/s not reached** in one of the two runs' if short else ''}"
                f"{_noise_note(r['paced']['cpu'], off['paced']['cpu'])} |")
        if off and confs.get("10"):
            r = confs["10"]
            ratio = r["max"]["rate"] / off["max"]["rate"]
            verdicts.append(
                f"| {'(diagnostic) ' if 'nice' in g else ''}{g}: max throughput, shadow 10 % / shadow off | ≥ 0.9 | {ratio:.2f} "
                f"({r['max']['rate']:,.0f} / {off['max']['rate']:,.0f} req/s) "
                f"| {_verdict(ratio, SHADOW_TARGETS['max_ratio'], True)}{_noise_note(r['max']['cpu'], off['max']['cpu'])} |")
    soak = state.get("soak")
    notes = []
    for g, confs in groups.items():
        off, r = confs.get("off"), confs.get("100")
        if not (off and r):
            continue
        p = r["paced"]
        out = p.get("shadow") or {}
        answered = sum(v for k, v in out.items() if k in ("match", "mismatch"))
        total = sum(out.values())
        calls = p.get("legacy_calls")
        emu_s = p["cpu"].get("emulator_cpu_s", 0.0)
        db_extra = p["cpu"].get("mariadb_cores", 0) - off["paced"]["cpu"].get("mariadb_cores", 0)
        us_off = 1e6 * off["paced"]["cpu"]["target_cpu_s"] / max(1, off["paced"]["requests"])
        us_on = 1e6 * p["cpu"]["target_cpu_s"] / max(1, p["requests"])
        notes.append(
            f"- {g}, shadow 100 %, paced run: {p['requests']:,} client requests; "
            + (f"{calls:,} shadow calls reached the emulator ({100 * calls / max(1, p['requests']):.0f} %); " if calls is not None else "")
            + f"{answered:,} of {total:,} shadow outcomes were compared answers ({100 * answered / max(1, total):.0f} %; the rest "
            f"skipped — 64-in-flight cap or full diff queue — or timed out); the emulator used "
            f"{p['cpu'].get('emulator_cores', 0):.2f} cores"
            + (f" = {1000 * emu_s / calls:.1f} ms of CPU per call" if calls else "")
            + f", MariaDB {db_extra:+.2f} cores vs shadow off; the edge {us_on:,.0f} µs CPU per client request "
            f"(shadow off: {us_off:,.0f}). Box {p['cpu']['machine_busy_pct']:.0f} % busy (off: "
            f"{off['paced']['cpu']['machine_busy_pct']:.0f} %).")
    if soak:
        mb = lambda kb: kb / 1024  # noqa: E731
        verdicts.append(
            f"| edge VmRSS, every answer mismatching, {soak['seconds']} s of shadow-100 load"
            f"{' (run of ' + soak['from_run'] + ')' if soak.get('from_run') else ''} | flat after warm-up "
            f"| {mb(soak['rss_start_kb']):.1f} → max {mb(soak['rss_max_kb']):.1f} → end {mb(soak['rss_end_kb']):.1f} MB "
            f"| {'**met**' if soak['bounded'] else '**missed**'} (after warm-up at t={soak['warmup_s']} s: "
            f"+{mb(soak['growth_after_warmup_kb']):.1f} MB, allowed {mb(soak['bounded_limit_kb']):.1f} MB) |")
    return "\n".join(rows), "\n".join(verdicts), notes


def soak_block(state: dict) -> str:
    s = state.get("soak")
    if not s:
        return "Not run (BENCH_SHADOW_SOAK=0)."
    mb = lambda kb: kb / 1024  # noqa: E731
    w = s.get("wrk") or {}
    rep = s["report"]
    meta = rep.get("meta") or {}
    pts = ", ".join(f"{x['t_s']} s: {mb(x['rss_kb']):.1f}" for x in s["samples"])
    fields = "; ".join(f"`{x['field']}` {x['mismatches']:,} mismatches / {x['noise']:,} noise → {x['verdict']} "
                       f"({x['examples']} examples)" for x in rep.get("fields", [])[:8])
    more = len(rep.get("fields", [])) - 8
    load_desc = f"{s['rate']} req/s paced" if s["rate"] else f"unpaced (as fast as it goes) `wrk -t1 -c{s['conns']}`"
    lines = [
        *([f"- **From the run of {s['from_run']}** (this run was made with BENCH_SHADOW_SOAK=0)."] if s.get("from_run") else []),
        f"- Set-up: the 1-worker edge with `bench/routing-shadow-100.yaml`, a fresh process; the emulator's fault knob "
        f"`POST /_emulator/faults {{\"path\": \"/shopping/cal_price/v4_4\", \"random_field\": \"quote_time\"}}` adds a "
        f"random `data.quote_time` to every legacy answer, so every comparison differs. Load: {load_desc} for "
        f"{s['seconds']} s: {w.get('requests', 0):,} client requests at {w.get('rate', 0):,.0f} req/s, "
        f"p99 {((w.get('latency_ms') or {}).get('p99') or 0):.1f} ms, non-2xx {((w.get('errors') or {}).get('status'))}. "
        f"VmRSS (all processes of the edge) every {s['interval']} s.",
        f"- VmRSS: start {mb(s['rss_start_kb']):.1f} MB, max {mb(s['rss_max_kb']):.1f} MB, end {mb(s['rss_end_kb']):.1f} MB; "
        f"after warm-up (t = {s['warmup_s']} s, {mb(s['rss_base_kb']):.1f} MB) it grew by {mb(s['growth_after_warmup_kb']):.1f} MB "
        f"→ **{'bounded (flat after warm-up)' if s['bounded'] else 'NOT bounded'}** (rule: growth after warm-up "
        f"≤ max(4 MB, 5 %)). VmHWM {', '.join(f'{mb(v):.1f}' for v in s['hwm_kb'].values())} MB.",
        f"  Samples (MB): {pts}.",
        f"- `GET /_edge/shadow` at the end: calc_price requests {rep.get('requests')}, compared {rep.get('compared'):,}, "
        f"noise samples {rep.get('noise_samples'):,}; fields: {fields}{f' (+{more} more)' if more > 0 else ''}.",
        f"  Example store: {rep.get('store')} (cap EDGE_SHADOW_EXAMPLES_BYTES = {((rep.get('store') or {}).get('max_bytes') or 0) / 2**20:.0f} MiB). "
        f"`meta.worker`: {meta.get('worker')}; `meta.inflight`: {meta.get('inflight')}.",
        f"- `/metrics` at the end: `edge_shadow_requests_total{{route=\"calc_price\"}}` {s['metrics']['edge_shadow_requests_total']}; "
        f"`edge_shadow_mismatch_fields_total` {len(s['metrics']['edge_shadow_mismatch_fields_total'])} field labels "
        f"{dict(list(s['metrics']['edge_shadow_mismatch_fields_total'].items())[:6])}; `edge_shadow_noise_fields_total` "
        f"{dict(list(s['metrics']['edge_shadow_noise_fields_total'].items())[:6])}; `edge_shadow_inflight` "
        f"{s['metrics']['edge_shadow_inflight']:.0f}.",
    ]
    return "\n".join(lines)


def _history(old: str, begin: str, end: str, header: list[str], line: str, key: str) -> list[str]:
    hist = []
    if begin in old and end in old:
        block = old.split(begin, 1)[1].split(end, 1)[0]
        hist = [ln for ln in block.strip().splitlines() if ln.startswith("| 2")]
    hist = [ln for ln in hist if not ln.startswith(key)]
    hist.append(line)
    return [begin, *header, *hist, end]


def _replace_section(old: str, title: str, section: str) -> str:
    if title in old:
        before, rest = old.split(title, 1)
        nxt = re.search(r"^## ", rest, re.MULTILINE)
        after = rest[nxt.start():] if nxt else ""
        return before.rstrip() + "\n\n" + section.rstrip() + "\n" + ("\n" + after if after else "")
    return old.rstrip() + "\n\n" + section.rstrip() + "\n"


def cmd_report(a: argparse.Namespace) -> None:
    state = load()
    f = state.get("facts", {})
    md = Path(a.results_md)
    old = md.read_text() if md.exists() else "# Benchmark results\n"
    load_block = LOAD_BLOCK.format(n=state.get("workload", {}).get("n"), nproc=f.get("nproc"), noisy=NOISY_CORES,
                                   retries=NOISY_RETRIES)
    key = f"| {f.get('date')} | {f.get('commit')} |"
    if a.kind == "price":
        table, verdicts, notes = report_price(state)
        t = state["targets"]

        def g(n: str, *p: str) -> Any:
            cur: Any = t.get(n)
            for k in p:
                cur = None if cur is None else cur.get(k)
            return cur

        hist = _history(
            old, "<!-- bench-price:history:begin -->", "<!-- bench-price:history:end -->",
            ["| date | commit | 1w max req/s | 2w max req/s | 1w p99 ms @1000 (rate) | 2w p99 ms @1000 (rate) | prices/s (pure) |",
             "|---|---|---:|---:|---:|---:|---:|"],
            f"{key} {_f(g('edge-1w', 'max', 'rate'), 0)} | {_f(g('edge-2w', 'max', 'rate'), 0)} "
            f"| {_f(g('edge-1w', 'paced', 'latency_ms', 'p99'))} ({_f(g('edge-1w', 'paced', 'rate'), 0)}) "
            f"| {_f(g('edge-2w', 'paced', 'latency_ms', 'p99'))} ({_f(g('edge-2w', 'paced', 'rate'), 0)}) "
            f"| {_f((state.get('speed') or {}).get('prices_per_s'), 0)} |", key)
        prof = _profile_lines(state, [n for n in ("edge-1w", "edge-2w", "pricing") if n in state.get("profiles", {})])
        section = f"""{PRICE_SECTION}

{_facts_block(f, 'bench/out/price/')}

### Set-up

- **Database**: database `bench_shop` on that server, `CREATE DATABASE IF NOT EXISTS` and re-seeded at the start of every
  run with `shopping-db --db-url mysql+aiomysql://root@127.0.0.1:3306/bench_shop seed --demo` (the deterministic demo data).
- **edge (1 worker)**: `SHOP_DB_URL=mysql+aiomysql://root@127.0.0.1:3306/bench_shop shopping-edge --routing bench/routing-price.yaml`
  (the production routes; calc_price at `new_percent: 100`, no shadow): calc_price is answered in the edge process by the
  new handler (reference data from the in-process cache, the caller's rows from MariaDB). One process (uvloop), access
  log ON (stdout → file), metrics ON, admin port up. No old-shopping process runs: calc_price never goes there.
- **edge (2 workers)**: the same with `--workers 2` (gunicorn + `aiohttp.GunicornUVLoopWebWorker`).
{_workload_block(state)}
{load_block}

### Results

{table}

{verdicts}

{chr(10).join(notes)}

### Profile

`.venv/bin/py-spy record -p <pid> -d {PROFILE_SECONDS} -f raw` of the edge process (for 2 workers: one py-spy per worker, at once)
under a fresh paced 1000 req/s run, and `py-spy record -f raw -- python bench/pricing_speed.py`; summarised by
`bench/pricebench.py` as shares of all non-idle samples (own = the innermost frame; inclusive = anywhere on the stack;
frames on ≥ 95 % of the stacks left out). Raw stacks in `bench/out/price/pyspy-*.txt`.

{chr(10).join(prof) or '- (not run: BENCH_PROFILE=0)'}

### Run history

One line per run of `make bench-price`.

{chr(10).join(hist)}
"""
        new = _replace_section(old, PRICE_SECTION, section)
    else:
        table, verdicts, notes = report_shadow(state)
        t = state["targets"]
        hist_line_parts = []
        for g in sorted({r["group"] for r in t.values()}):
            confs = {r["shadow"]: r for r in t.values() if r["group"] == g}
            off, s100, s10 = confs.get("off"), confs.get("100"), confs.get("10")
            if off and s100 and s10:
                hist_line_parts.append(
                    f"{g}: p99 {off['paced']['latency_ms']['p99']:.1f}/{s100['paced']['latency_ms']['p99']:.1f} ms "
                    f"({s100['paced']['latency_ms']['p99'] / off['paced']['latency_ms']['p99']:.2f}), max "
                    f"{off['max']['rate']:,.0f}/{s10['max']['rate']:,.0f} ({s10['max']['rate'] / off['max']['rate']:.2f})")
        soak = state.get("soak")
        soak_cell = (f"{soak['rss_start_kb'] / 1024:.1f}/{soak['rss_max_kb'] / 1024:.1f}/{soak['rss_end_kb'] / 1024:.1f} MB "
                     f"in {soak['seconds']} s ({'bounded' if soak['bounded'] else 'NOT bounded'})") if soak else "—"
        hist = _history(
            old, "<!-- bench-shadow:history:begin -->", "<!-- bench-shadow:history:end -->",
            ["| date | commit | p99 off/100 % ms (ratio), max off/10 % req/s (ratio) | soak VmRSS start/max/end |", "|---|---|---|---|"],
            f"{key} {'; '.join(hist_line_parts) or '—'} | {soak_cell} |", key)
        prof = _profile_lines(state, [n for n in state.get("profiles", {})])
        section = f"""{SHADOW_SECTION}

{_facts_block(f, 'bench/out/shadow/')}

### Set-up

- **Database**: `bench_shop` as in bench-price (re-seeded at the start), shared by both sides.
- **old shopping**: the emulator, `python -m emulators.legacy --host 127.0.0.1 --port 29220 --db-url mysql+aiomysql://root@127.0.0.1:3306/bench_shop`
  (one aiohttp process, its own float calc_price, ~10 queries per request, request log on). It shares the 2 CPUs with
  the edge, MariaDB and wrk; in production old shopping has its own machines. Every server runs in its own session, and
  with the kernel's autogroup scheduling (on here) CPU is shared between sessions first: under contention the emulator
  gets as much CPU as the whole edge. So the 2-worker runs are repeated with the emulator's threads and its session's
  autogroup at nice 19 ("emulator at nice 19"): it then gets only CPU nobody else wants, which at these loads is almost
  none, i.e. the shadow side is slow (calls time out after 3 s → `error`, or find the 64 in-flight slots taken →
  `skipped`). Those rows are diagnostic (what the shadow machinery costs the edge when the legacy side is slow, without
  the legacy side's CPU on this box); the verdicts that count are the rows without.
- **edge**: as in bench-price (`SHOP_DB_URL` = bench_shop, calc_price at `new_percent: 100`, access log on), `EDGE_LEGACY_URL` = the
  emulator, started fresh for each configuration, in this order: shadow **off** (`bench/routing-price.yaml`),
  **100 %** (`bench/routing-shadow-100.yaml`, `shadow: {{percent: 100}}`), **10 %** (`bench/routing-shadow-10.yaml`).
  Default shadow settings: 64 shadow calls in flight per process (beyond: skipped), 3 s timeout, diff queue 1000, noise
  sample 10 % of shadowed requests (the new side called a second time). The new side is primary, so the shadow call
  goes to the emulator.
{_workload_block(state)}
{load_block}
- Shadow outcomes are the change of `edge_shadow_requests_total{{route="calc_price"}}` (all workers) over the paced run;
  they keep arriving for a moment after it ends.

### Results

{table}

{verdicts}

{chr(10).join(notes)}

### Memory with every response mismatching

{soak_block(state)}

### Profile

`.venv/bin/py-spy record -p <pid> -d {PROFILE_SECONDS} -f raw` of the edge (one py-spy per worker, at once) under a fresh paced
1000 req/s run with shadow 100 %, summarised as in bench-price (raw in `bench/out/shadow/pyspy-*.txt`):

{chr(10).join(prof) or '- (not run: BENCH_PROFILE=0)'}

### Run history

One line per run of `make bench-shadow`.

{chr(10).join(hist)}
"""
        new = _replace_section(old, SHADOW_SECTION, section)
    print(section)
    md.write_text(new)
    say(f"wrote {md}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("workload")
    w.add_argument("--users", type=int, default=50)
    c = sub.add_parser("check")
    c.add_argument("name")
    c.add_argument("url")
    c.add_argument("--edge", action="store_true")
    sub.add_parser("facts")
    sp = sub.add_parser("speed")
    sp.add_argument("--profile", action="store_true")
    m = sub.add_parser("measure")
    m.add_argument("name")
    m.add_argument("url")
    m.add_argument("--pid", type=int, required=True)
    m.add_argument("--db-pid", type=int)
    m.add_argument("--emulator-pid", type=int)
    m.add_argument("--emulator-url", help="the emulator's control API (python -m emulators.legacy --admin-port)")
    m.add_argument("--metrics")
    m.add_argument("--label")
    m.add_argument("--group", default="")
    m.add_argument("--shadow", default="off")
    m.add_argument("--workers", type=int, default=1)
    pr = sub.add_parser("profile")
    pr.add_argument("name")
    pr.add_argument("url")
    pr.add_argument("--pid", type=int, required=True)
    pr.add_argument("--rate", type=int, default=RATE)
    pr.add_argument("--label")
    s = sub.add_parser("soak")
    s.add_argument("url")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--admin", required=True)
    s.add_argument("--emulator", required=True, help="the emulator's control API (python -m emulators.legacy --admin-port)")
    s.add_argument("--seconds", type=int, default=600)
    s.add_argument("--interval", type=int, default=30)
    s.add_argument("--rate", type=int, default=0)
    cs = sub.add_parser("carry-soak")
    cs.add_argument("previous")
    n = sub.add_parser("note")
    n.add_argument("key")
    n.add_argument("value")
    r = sub.add_parser("report")
    r.add_argument("--kind", choices=("price", "shadow"), required=True)
    r.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"))
    a = p.parse_args()
    if a.cmd == "carry-soak":
        prev = json.loads(Path(a.previous).read_text())
        if prev.get("soak"):
            st = load()
            st["soak"] = {**prev["soak"], "from_run": prev["soak"].get("from_run") or (prev.get("facts") or {}).get("date")}
            save(st)
            say(f"soak figures kept from the run of {st['soak']['from_run']}")
        return
    if a.cmd == "note":
        st = load()
        st[a.key] = json.loads(a.value) if a.value[:1] in "[{0123456789" else a.value
        save(st)
        return
    {"workload": cmd_workload, "check": cmd_check, "facts": cmd_facts, "speed": cmd_speed, "measure": cmd_measure,
     "profile": cmd_profile, "soak": cmd_soak, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
