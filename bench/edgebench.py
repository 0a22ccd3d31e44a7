#!/usr/bin/env python3
"""Measurement half of `make bench-edge` (bench/edge.sh starts and stops the servers).

Stdlib only. Subcommands:

  check   NAME URL [--edge]             one request; fails unless 200 + legacy envelope (+ edge headers)
  measure NAME URL --pid P [--upstream-pid U]
                                        warm-up, wrk max throughput, hey latency at 1000 req/s
                                        (hey's own -c 10 -q 100, plus a staggered variant), CPU accounting
  rss     URL --pid P --metrics URL --requests N
                                        drive N requests through the edge (counted by its own
                                        edge_requests_total), then read VmRSS / VmHWM
  report  --results-md FILE             print the table and ratios, refresh the RESULTS.md section

Every subcommand reads/writes OUT/results.json (OUT = $BENCH_OUT, default bench/out/edge).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import platform
import re
import resource
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Self

OUT = Path(os.environ.get("BENCH_OUT", "bench/out/edge"))
RESULTS = OUT / "results.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK_THREADS = int(os.environ.get("BENCH_WRK_THREADS", "1"))
WRK_CONNS = int(os.environ.get("BENCH_WRK_CONNS", "64"))
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "2"))
HEY_SECONDS = int(os.environ.get("BENCH_HEY_SECONDS", "15"))
HEY_CONC = 10
HEY_QPS_PER_WORKER = 100  # 10 x 100 = 1000 req/s
STAGGER = os.environ.get("BENCH_STAGGER", "1") != "0"
NOISY_CORES = 0.25  # other processes' CPU during a run above which a verdict is flagged as noisy

TARGETS = {  # ratio / limit, and which way is good
    "p99_ratio": 1.5,
    "max_ratio_1w": 0.15,
    "max_ratio_2w": 0.25,
    "rss_mb": 150.0,
}


# ---------------------------------------------------------------- state


def load() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {"targets": {}, "order": []}


def save(state: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(RESULTS)


# ---------------------------------------------------------------- /proc helpers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """root and all its descendants (nginx master + workers, gunicorn arbiter + workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12])  # utime + stime
    return total / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy seconds, wall-clock total seconds) summed over all CPUs, from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])  # guest time is already inside user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuWindow:
    """CPU used during a run: by the target, the upstream, the load generator, and everybody else."""

    def __init__(self, target_root: int, upstream_root: int | None) -> None:
        self.target = tree(target_root)
        self.upstream = tree(upstream_root) if upstream_root else []

    def __enter__(self) -> Self:
        self.t0 = time.monotonic()
        self.c_target = cpu_seconds(self.target)
        self.c_up = cpu_seconds(self.upstream)
        self.c_gen = children_cpu()
        self.busy0, self.tot0 = machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.target_cpu = cpu_seconds(self.target) - self.c_target
        self.upstream_cpu = cpu_seconds(self.upstream) - self.c_up
        self.gen_cpu = children_cpu() - self.c_gen
        busy1, tot1 = machine_busy()
        self.machine_cpu = busy1 - self.busy0
        self.ncpu_seconds = tot1 - self.tot0
        # everything else on the box (other people's tests, databases, ...): the noise floor
        self.foreign_cpu = max(0.0, self.machine_cpu - self.target_cpu - self.upstream_cpu - self.gen_cpu)

    def as_dict(self) -> dict:
        w = self.wall or 1.0
        return {
            "wall_s": round(self.wall, 2),
            "target_cores": round(self.target_cpu / w, 2),
            "upstream_cores": round(self.upstream_cpu / w, 2),
            "loadgen_cores": round(self.gen_cpu / w, 2),
            "foreign_cores": round(self.foreign_cpu / w, 2),
            "machine_busy_pct": round(100 * self.machine_cpu / (self.ncpu_seconds or 1.0), 1),
            "target_cpu_s": round(self.target_cpu, 3),
        }


# ---------------------------------------------------------------- load generators


def run(cmd: list[str], log: Path | None = None) -> str:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        raise SystemExit(f"bench: {cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc.stdout


def wrk(url: str, seconds: int, log: Path | None = None) -> dict:
    out = run(["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNS}", f"-d{seconds}s", "--latency", url], log)
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", out, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if not (m and rps):
        raise SystemExit(f"bench: cannot parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {p: _dur(v) for p, v in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+\w+)", out, re.MULTILINE)}
    return {
        "requests": int(m.group(1)),
        "rps": float(rps.group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
    }


def _dur(text: str) -> float:
    """wrk's '1.23ms' / '456.00us' / '1.02s' → milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def hey(url: str, log: Path) -> dict:
    """The brief's command: hey -z 15s -c 10 -q 100 (10 workers x 100 req/s), summary parsed."""
    out = run(["hey", "-z", f"{HEY_SECONDS}s", "-c", str(HEY_CONC), "-q", str(HEY_QPS_PER_WORKER), url], log)
    pct = {int(p): float(v) * 1000 for p, v in re.findall(r"^\s+(\d+)% in ([\d.]+) secs", out, re.MULTILINE)}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errs = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?!\d+ responses)", out, re.MULTILINE))
    if 50 not in pct or 99 not in pct or not rps:
        raise SystemExit(f"bench: cannot parse hey output:\n{out}")
    ok = codes.get(200, 0)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": pct[50],
        "p90_ms": pct.get(90),
        "p99_ms": pct[99],
        "non200": sum(codes.values()) - ok,
        "errors": errs,
    }


def hey_staggered(url: str, log: Path) -> dict:
    """Same 1000 req/s, but from 10 separate `hey -c 1 -q 100` started at spread-out instants.

    hey -c 10 -q 100 starts its 10 workers' tickers together, so the target really gets a burst of
    10 concurrent requests every 10 ms; this variant is closer to a smooth arrival stream.
    """
    procs, files = [], []
    start = time.monotonic()
    for i in range(HEY_CONC):
        # spread the 10 tickers across one 10 ms period
        time.sleep(max(0.0, start + i * (1 / HEY_QPS_PER_WORKER / HEY_CONC) - time.monotonic()))
        f = (OUT / f"{log.stem}-{i}.csv").open("w")
        files.append(f)
        procs.append(subprocess.Popen(
            ["hey", "-z", f"{HEY_SECONDS}s", "-c", "1", "-q", str(HEY_QPS_PER_WORKER), "-o", "csv", url],
            stdout=f, stderr=subprocess.PIPE, text=True,
        ))
    errs = [p.communicate()[1] for p in procs]
    for f in files:
        f.close()
    lat, non200 = [], 0
    for i in range(HEY_CONC):
        path = OUT / f"{log.stem}-{i}.csv"
        for row in csv.DictReader(io.StringIO(path.read_text())):
            lat.append(float(row["response-time"]) * 1000)
            if row["status-code"] != "200":
                non200 += 1
        path.unlink()
    log.write_text(f"{HEY_CONC} x hey -c 1 -q {HEY_QPS_PER_WORKER} -o csv; {len(lat)} responses\n" + "".join(errs))
    if any(p.returncode for p in procs) or not lat:
        raise SystemExit(f"bench: staggered hey failed: {' '.join(errs)[:500]}")
    lat.sort()

    def q(p: float) -> float:  # same rule as hey: index floor(p * n)
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    return {"rps": round(len(lat) / HEY_SECONDS, 1), "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "non200": non200}


# ---------------------------------------------------------------- subcommands


def cmd_check(a: argparse.Namespace) -> None:
    req = urllib.request.Request(a.url, headers={"X-Request-Id": "bench-check-1"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
        headers = r.headers
        status = r.status
    problems = []
    if status != 200:
        problems.append(f"status {status}")
    try:
        doc = json.loads(body)
        if doc.get("code") != 0 or "data" not in doc:
            problems.append("body is not the legacy envelope with code 0")
    except ValueError:
        problems.append("body is not JSON")
    if a.edge:
        if headers.get("X-Edge-Route") != "passthrough" or headers.get("X-Edge-Backend") != "legacy":
            problems.append(f"edge headers route={headers.get('X-Edge-Route')} backend={headers.get('X-Edge-Backend')}")
        if headers.get("X-Request-Id") != "bench-check-1":
            problems.append("X-Request-Id not kept")
    if problems:
        raise SystemExit(f"bench: {a.name} at {a.url}: " + "; ".join(problems))
    print(f"bench: {a.name} ok ({len(body)}-byte legacy envelope)")


def cmd_measure(a: argparse.Namespace) -> None:
    state = load()
    name = a.name
    print(f"bench: {name}: warm-up {WARMUP_SECONDS}s", flush=True)
    wrk(a.url, WARMUP_SECONDS)
    rss_before = status_kb(a.pid, "VmRSS")

    print(f"bench: {name}: wrk -t{WRK_THREADS} -c{WRK_CONNS} -d{WRK_SECONDS}s", flush=True)
    with CpuWindow(a.pid, a.upstream_pid) as cw:
        w = wrk(a.url, WRK_SECONDS, OUT / f"wrk-{name}.txt")
    w["cpu"] = cw.as_dict()
    w["cpu_us_per_req"] = round(1e6 * cw.target_cpu / w["requests"], 1) if w["requests"] else None
    print(f"bench: {name}: {w['rps']:.0f} req/s, target used {w['cpu']['target_cores']} cores, "
          f"others on the box {w['cpu']['foreign_cores']} cores", flush=True)

    time.sleep(1)
    print(f"bench: {name}: hey -z {HEY_SECONDS}s -c {HEY_CONC} -q {HEY_QPS_PER_WORKER}", flush=True)
    with CpuWindow(a.pid, a.upstream_pid) as cw:
        h = hey(a.url, OUT / f"hey-{name}.txt")
    h["cpu"] = cw.as_dict()
    print(f"bench: {name}: p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms at {h['rps']:.0f} req/s", flush=True)

    s = None
    if STAGGER:
        time.sleep(1)
        print(f"bench: {name}: {HEY_CONC} staggered x hey -c 1 -q {HEY_QPS_PER_WORKER}", flush=True)
        with CpuWindow(a.pid, a.upstream_pid) as cw:
            s = hey_staggered(a.url, OUT / f"hey-staggered-{name}.txt")
        s["cpu"] = cw.as_dict()
        print(f"bench: {name}: staggered p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms", flush=True)

    state["targets"][name] = {
        "label": a.label or name, "url": a.url, "pids": tree(a.pid), "wrk": w, "hey": h, "hey_staggered": s,
        "rss_kb": status_kb(a.pid, "VmRSS"), "rss_kb_before": rss_before,
    }
    if name not in state["order"]:
        state["order"].append(name)
    save(state)


def _requests_total(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("edge_requests_total{", "edge_requests_total ")))


def cmd_rss(a: argparse.Namespace) -> None:
    state = load()
    start_total = _requests_total(a.metrics)
    rss_start = status_kb(a.pid, "VmRSS")
    samples = []
    rate = state["targets"].get(a.target_name, {}).get("wrk", {}).get("rps") or 1000.0
    t0 = time.monotonic()
    done = 0.0
    print(f"bench: RSS run: {a.requests:,} requests through the edge (pid {a.pid}), RSS now {rss_start / 1024:.1f} MB", flush=True)
    while done < a.requests:
        remaining = a.requests - done
        chunk = int(min(60, max(3, remaining / rate * 1.02 + 1)))
        w = wrk(a.url, chunk)
        if w["non2xx"] or w["socket_errors"]:
            print(f"bench: RSS run: {w['non2xx']} non-2xx, {w['socket_errors']} socket errors in this chunk", flush=True)
        rate = w["rps"] or rate
        done = _requests_total(a.metrics) - start_total
        rss = status_kb(a.pid, "VmRSS")
        samples.append({"t_s": round(time.monotonic() - t0, 1), "requests": int(done), "rss_kb": rss})
        print(f"bench: RSS run: {done:>10,.0f} requests, {rate:.0f} req/s, VmRSS {rss / 1024:.1f} MB", flush=True)
    time.sleep(2)  # let in-flight work settle
    state["rss"] = {
        "pid": a.pid,
        "requests": int(done),
        "seconds": round(time.monotonic() - t0, 1),
        "requests_total_at_end": int(_requests_total(a.metrics)),
        "rss_kb_start": rss_start,
        "rss_kb_end": status_kb(a.pid, "VmRSS"),
        "hwm_kb": status_kb(a.pid, "VmHWM"),
        "samples": samples,
    }
    save(state)
    print(f"bench: RSS after {done:,.0f} requests: {state['rss']['rss_kb_end'] / 1024:.1f} MB "
          f"(peak {state['rss']['hwm_kb'] / 1024:.1f} MB)", flush=True)


def _cmd_out(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (p.stdout + p.stderr).strip()


def pkg_version(pkg: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "?"


def machine_facts(code_dirs: list[str]) -> dict:
    """Date, machine, load and commit of a run (the commit starred when `code_dirs` have uncommitted changes)."""
    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE).group(1))
    commit = _cmd_out(["git", "rev-parse", "--short", "HEAD"])
    dirty = _cmd_out(["git", "status", "--porcelain", "--", *code_dirs])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else "?",
        "mem": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": os.uname().release,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "commit": commit + ("*" if dirty.strip() else ""),
        "dirty": bool(dirty.strip()),
    }


def wrk_version() -> str:
    out = _cmd_out(["wrk", "-v"])
    return out.split("\n", 1)[0].split()[1] if out.startswith("wrk") else "?"


def cmd_facts(a: argparse.Namespace) -> None:
    state = load()
    nginx_v = _cmd_out(["nginx", "-v"]).rsplit("/", 1)[-1]
    hey_v = _cmd_out(["dpkg-query", "-W", "-f", "${Version}", "hey"])
    state["facts"] = {
        **machine_facts(["proxy", "handlers", "shop"]),
        "tools": (f"nginx {nginx_v}, wrk {wrk_version()}, hey {hey_v}, Python {platform.python_version()}, "
                  f"aiohttp {pkg_version('aiohttp')}, uvloop {pkg_version('uvloop')}, gunicorn {pkg_version('gunicorn')}"),
        "path": a.path,
        "upstream_workers": a.upstream_workers,
        "body_bytes": a.body_bytes,
    }
    save(state)


# ---------------------------------------------------------------- report


def _fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None else f"{v:,.{nd}f}"


def _verdict(value: float | None, limit: float, higher_is_better: bool, unit: str = "") -> str:
    if value is None:
        return "not measured"
    ok = value >= limit if higher_is_better else value <= limit
    if ok:
        return f"**met** ({value:.2f}{unit} {'≥' if higher_is_better else '≤'} {limit:g}{unit})"
    if higher_is_better:
        return (f"**missed** ({value:.2f}{unit} vs ≥ {limit:g}{unit}: short by {limit - value:.2f}{unit}, "
                f"needs {limit / value:.1f}× the throughput)" if value else f"**missed** ({value}{unit})")
    return (f"**missed** ({value:.2f}{unit} vs ≤ {limit:g}{unit}: over by {value - limit:.2f}{unit}, "
            f"{value / limit:.1f}× the limit)")


def build_report(state: dict) -> tuple[str, list[str], dict]:
    t = state["targets"]
    facts = state.get("facts", {})
    rows = []
    head = ("| target | max req/s (wrk) | CPU used | CPU µs/req | p50 / p99 ms @1000 (hey -c10 -q100) "
            "| p50 / p99 ms @1000 (staggered) | errors | other load on box |")
    rows.append(head)
    rows.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in state["order"]:
        r = t[name]
        w, h, s = r["wrk"], r["hey"], r.get("hey_staggered")
        errors = w["non2xx"] + w["socket_errors"] + h["non200"] + h["errors"] + (s["non200"] if s else 0)
        stag = f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}" if s else "—"
        rows.append(
            f"| {r['label']} | {w['rps']:,.0f} | {w['cpu']['target_cores']:.2f} cores | {_fmt(w['cpu_us_per_req'], 0)} "
            f"| {h['p50_ms']:.1f} / {h['p99_ms']:.1f} ({h['rps']:.0f} req/s) "
            f"| {stag} "
            f"| {errors} | {w['cpu']['foreign_cores']:.2f} / {h['cpu']['foreign_cores']:.2f} cores |"
        )

    def get(name: str, *path: str) -> float | None:
        cur = t.get(name)
        for p in path:
            if cur is None:
                return None
            cur = cur.get(p)
        return cur

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    nginx_p99 = get("nginx", "hey", "p99_ms")
    nginx_max = get("nginx", "wrk", "rps")
    r_p99_1 = ratio(get("edge-1w", "hey", "p99_ms"), nginx_p99)
    r_p99_2 = ratio(get("edge-2w", "hey", "p99_ms"), nginx_p99)
    r_p99s_1 = ratio(get("edge-1w", "hey_staggered", "p99_ms"), get("nginx", "hey_staggered", "p99_ms"))
    r_max_1 = ratio(get("edge-1w", "wrk", "rps"), nginx_max)
    r_max_2 = ratio(get("edge-2w", "wrk", "rps"), nginx_max)
    r_cpu_1 = ratio(get("edge-1w", "wrk", "cpu_us_per_req"), get("nginx", "wrk", "cpu_us_per_req"))
    rss = state.get("rss")
    rss_mb = rss["rss_kb_end"] / 1024 if rss else None

    def noise(*parts: tuple[str, str]) -> str:
        """' (noisy: …)' when other processes used a noticeable share of the box during the runs compared."""
        worst = max((get(n, k, "cpu", "foreign_cores") or 0.0) for n, k in parts)
        return f" — noisy: other processes used up to {worst:.2f} cores meanwhile" if worst > NOISY_CORES else ""

    def vrow(what: str, wanted: str, value: float | None, shown: str, verdict: str) -> str:
        return f"| {what} | {wanted} | {shown} | {verdict} |"

    lim = TARGETS
    verdicts = [
        vrow("edge (1 worker) p99 / nginx p99 at 1000 req/s", f"≤ {lim['p99_ratio']}", r_p99_1, _fmt(r_p99_1, 2),
             _verdict(r_p99_1, lim["p99_ratio"], False) + noise(("nginx", "hey"), ("edge-1w", "hey"))),
        vrow("edge (2 workers) p99 / nginx p99 at 1000 req/s", f"≤ {lim['p99_ratio']}", r_p99_2, _fmt(r_p99_2, 2),
             _verdict(r_p99_2, lim["p99_ratio"], False) + noise(("nginx", "hey"), ("edge-2w", "hey"))),
        vrow("edge max req/s / nginx max req/s, 1 worker", f"≥ {lim['max_ratio_1w']}", r_max_1, _fmt(r_max_1, 3),
             _verdict(r_max_1, lim["max_ratio_1w"], True) + noise(("nginx", "wrk"), ("edge-1w", "wrk"))),
        vrow("edge max req/s / nginx max req/s, 2 workers", f"≥ {lim['max_ratio_2w']}", r_max_2, _fmt(r_max_2, 3),
             _verdict(r_max_2, lim["max_ratio_2w"], True) + noise(("nginx", "wrk"), ("edge-2w", "wrk"))),
        vrow("edge (1 worker) VmRSS after 1,000,000 requests", f"≤ {lim['rss_mb']:g} MB", rss_mb, f"{_fmt(rss_mb, 1)} MB" if rss else "—",
             _verdict(rss_mb, lim["rss_mb"], False, " MB") if rss else "skipped (BENCH_RSS=0)"),
    ]
    extra = []
    if r_p99s_1 is not None:
        extra.append(f"- Staggered 1000 req/s (10 × `hey -c 1 -q 100`, tickers spread over 10 ms): edge (1 worker) "
                     f"p99 / nginx p99 = {r_p99s_1:.2f}.")
    if r_cpu_1 is not None:
        extra.append(f"- CPU per request under saturation: edge (1 worker) {get('edge-1w', 'wrk', 'cpu_us_per_req'):.0f} µs, "
                     f"nginx {get('nginx', 'wrk', 'cpu_us_per_req'):.0f} µs → the edge costs {r_cpu_1:.1f}× nginx's CPU per "
                     f"request; throughput ratio on CPU alone would be {1 / r_cpu_1:.3f}.")
    ng_cores = get("nginx", "wrk", "cpu", "target_cores")
    if ng_cores is not None and ng_cores < 0.9:
        extra.append(f"- nginx was not CPU-bound at its max ({ng_cores:.2f} of its 1 core): wrk, the upstream and the proxy share "
                     f"{facts.get('nproc')} CPUs, so the nginx figure is a floor and the throughput ratios flatter the edge.")
    e1_cores = get("edge-1w", "wrk", "cpu", "target_cores")
    if e1_cores is not None and e1_cores >= 0.9:
        extra.append(f"- The 1-worker edge was CPU-bound at its max ({e1_cores:.2f} cores): its throughput is its per-request CPU cost.")
    e2 = get("edge-2w", "wrk", "rps")
    e1 = get("edge-1w", "wrk", "rps")
    if e1 and e2:
        extra.append(f"- 2 workers vs 1: {e2 / e1:.2f}× the throughput; the 2 workers used "
                     f"{get('edge-2w', 'wrk', 'cpu', 'target_cores'):.2f} cores, the rest of the {facts.get('nproc')} CPUs went to wrk, "
                     f"the upstream and other processes.")
    up = get("upstream", "wrk", "rps")
    if up and nginx_max:
        extra.append(f"- Upstream alone: {up:,.0f} req/s = {up / nginx_max:.1f}× what the nginx proxy reaches, "
                     f"{up / (get('edge-2w', 'wrk', 'rps') or up):.0f}× the 2-worker edge: the upstream is not the bottleneck.")
    if rss:
        extra.append(f"- RSS run: {rss['requests']:,} requests in {rss['seconds']:.0f} s "
                     f"(edge_requests_total {rss['requests_total_at_end']:,} including the earlier runs); VmRSS "
                     f"{rss['rss_kb_start'] / 1024:.1f} MB before → {rss['rss_kb_end'] / 1024:.1f} MB after, "
                     f"VmHWM {rss['hwm_kb'] / 1024:.1f} MB.")
        if len(rss["samples"]) > 2:
            pts = ", ".join(f"{s_['requests'] // 1000}k: {s_['rss_kb'] / 1024:.1f}" for s_ in rss["samples"])
            extra.append(f"  VmRSS (MB) along the run: {pts}.")
    summary = {
        "date": facts.get("date"),
        "commit": facts.get("commit"),
        "upstream": up,
        "nginx": nginx_max,
        "edge1": get("edge-1w", "wrk", "rps"),
        "edge2": get("edge-2w", "wrk", "rps"),
        "p99_nginx": nginx_p99,
        "p99_edge1": get("edge-1w", "hey", "p99_ms"),
        "r_max_1": r_max_1,
        "r_max_2": r_max_2,
        "r_p99_1": r_p99_1,
        "rss_mb": rss_mb,
    }
    return "\n".join(rows), verdicts + ["", *extra], summary


SECTION = "## Edge passthrough (make bench-edge)"
HIST_BEGIN = "<!-- bench-edge:history:begin -->"
HIST_END = "<!-- bench-edge:history:end -->"


def cmd_report(a: argparse.Namespace) -> None:
    state = load()
    table, verdict_lines, summary = build_report(state)
    facts = state.get("facts", {})
    verdict_table = ["| target | wanted | measured | verdict |", "|---|---:|---:|---|"]
    verdict_rows = [v for v in verdict_lines if v.startswith("|")]
    notes = [v for v in verdict_lines if not v.startswith("|") and v]

    print()
    print(table)
    print()
    print("\n".join(verdict_table + verdict_rows))
    print()
    print("\n".join(notes))

    md_path = Path(a.results_md)
    old = md_path.read_text() if md_path.exists() else "# Benchmark results\n"
    history = []
    if HIST_BEGIN in old and HIST_END in old:
        block = old.split(HIST_BEGIN, 1)[1].split(HIST_END, 1)[0]
        history = [ln for ln in block.strip().splitlines() if ln.startswith("| 2")]
    s = summary
    # re-running `report` on the same results replaces that run's line instead of adding a second one
    history = [ln for ln in history if not ln.startswith(f"| {s['date']} | {s['commit']} |")]
    history.append(
        f"| {s['date']} | {s['commit']} | {_fmt(s['nginx'], 0)} | {_fmt(s['edge1'], 0)} | {_fmt(s['edge2'], 0)} "
        f"| {_fmt(s['r_max_1'], 3)} | {_fmt(s['r_max_2'], 3)} | {_fmt(s['p99_nginx'], 1)} | {_fmt(s['p99_edge1'], 1)} "
        f"| {_fmt(s['r_p99_1'], 2)} | {_fmt(s['rss_mb'], 1)} |"
    )
    f = facts
    section = f"""{SECTION}

Last run: **{f.get('date')}** on {f.get('host_note', 'this machine')}: {f.get('nproc')} CPUs ({f.get('cpu_model')}),
{f.get('mem')} RAM, kernel {f.get('kernel')}; load average before the run {f.get('loadavg')}.
Code: commit {f.get('commit')}{' (* = with uncommitted changes in proxy/, handlers/ or shop/)' if f.get('dirty') else ''}.
Tools: {f.get('tools')}.
Raw outputs of the last run: `bench/out/edge/` (gitignored).

### Set-up

- **upstream** (stand-in for old shopping): nginx, `worker_processes {f.get('upstream_workers')}`, answers every path
  with a fixed {f.get('body_bytes')}-byte JSON body in the legacy envelope `{{"code":0,"msg":"ok","data":{{…}}}}`,
  access log off, `keepalive_requests 1000000`. It gets one worker per CPU so that it is never the
  bottleneck: measured directly it does several times what any proxy below reaches (see the first row).
- **nginx**: the reference proxy, `worker_processes 1`, `proxy_pass` to the upstream through an
  `upstream {{ keepalive 128; }}` pool with `proxy_http_version 1.1` and `Connection ""`, sets
  `X-Request-Id`/`X-Forwarded-For` up and `X-Request-Id` down, `combined` access log written unbuffered to a
  file (one `write(2)` per request, as the edge's structlog line is written and flushed per request).
- **edge (1 worker)**: `shopping-edge --routing bench/routing-passthrough.yaml` (the production routes, all
  `new_percent: 0`, no shadow), one process (uvloop), access log ON (stdout → file), metrics ON, admin port up.
- **edge (2 workers)**: the same with `--workers 2` (gunicorn + `aiohttp.GunicornUVLoopWebWorker`,
  Prometheus multiprocess mode).
- Request: `GET {f.get('path')}` (matches no route: the plain passthrough), keep-alive, from 127.0.0.1.
- Load: warm-up `wrk -t1 -c64 -d{WARMUP_SECONDS}s`, then max throughput `wrk -t{WRK_THREADS} -c{WRK_CONNS} -d{WRK_SECONDS}s`, then
  latency at 1000 req/s `hey -z {HEY_SECONDS}s -c {HEY_CONC} -q {HEY_QPS_PER_WORKER}` (p50/p99 from hey's summary; hey prints
  0.1 ms resolution), then the same 1000 req/s as 10 separate `hey -c 1 -q 100` whose tickers are spread over a
  10 ms period ("staggered"). hey's own `-c 10 -q 100` starts all 10 tickers together, so what the server
  sees is a burst of 10 concurrent requests every 10 ms, not a smooth stream: its p99 is roughly
  10 × the per-request service time, which is why the staggered figure is shown next to it.
- Nothing is pinned (`taskset` not used): load generator, upstream and proxy share the {f.get('nproc')} CPUs
  under the normal scheduler. "CPU used" is the proxy's own utime+stime during the wrk run / wall time
  (all its processes); "CPU µs/req" is that CPU divided by requests served, which is the figure least
  disturbed by other load. "other load on box" is CPU used during the wrk / hey runs by processes that
  are not part of the bench (from /proc/stat); on a shared machine it is the noise floor.

### Results

{table}

{chr(10).join(verdict_table + verdict_rows)}

{chr(10).join(notes)}

### Run history

One line per run of `make bench-edge` (kept when the section above is refreshed).

{HIST_BEGIN}
| date | commit | nginx req/s | edge 1w req/s | edge 2w req/s | 1w ratio | 2w ratio | nginx p99 ms | edge 1w p99 ms | p99 ratio | RSS MB |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(history)}
{HIST_END}
"""
    if SECTION in old:
        before, rest = old.split(SECTION, 1)
        nxt = re.search(r"^## ", rest, re.MULTILINE)
        after = rest[nxt.start():] if nxt else ""
        new = before.rstrip() + "\n\n" + section + ("\n" + after if after else "")
    else:
        new = old.rstrip() + "\n\n" + section
    md_path.write_text(new)
    print(f"\nbench: wrote {md_path}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("name")
    c.add_argument("url")
    c.add_argument("--edge", action="store_true")
    m = sub.add_parser("measure")
    m.add_argument("name")
    m.add_argument("url")
    m.add_argument("--label")
    m.add_argument("--pid", type=int, required=True)
    m.add_argument("--upstream-pid", type=int)
    r = sub.add_parser("rss")
    r.add_argument("url")
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--metrics", required=True)
    r.add_argument("--requests", type=int, default=1_000_000)
    r.add_argument("--target-name", default="edge-1w")
    f = sub.add_parser("facts")
    f.add_argument("--path", required=True)
    f.add_argument("--upstream-workers", required=True)
    f.add_argument("--body-bytes", type=int, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--results-md", default="bench/RESULTS.md")
    a = p.parse_args()
    {"check": cmd_check, "measure": cmd_measure, "rss": cmd_rss, "facts": cmd_facts, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
