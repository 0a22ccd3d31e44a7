"""`edgectl`: the operator's tool for routing.yaml and a running edge.

    edgectl validate [FILE]              check a routing file exactly as the edge would
    edgectl set ROUTE|GROUP PERCENT      change one route's (or a group's) new_percent, then ask the edge to reload
    edgectl rollback ROUTE|GROUP | --all new_percent: 0 for one route or group / every route
    edgectl history [--route R]          who changed what when (edgectl's append-only audit log)
    edgectl consumer EVENT OWNER         who applies an event type (consumers:): legacy, new or a percentage
    edgectl consumer --rollback-all      every event type back to legacy
    edgectl status [--window 1m] [--watch [N]] [--json] [--prometheus URL]
                                         table in force, live rates per route and side, verdict, consumer owners
                                         (--prometheus: the same rates from Prometheus, all edges it scrapes)
    edgectl shadow ROUTE                 top mismatching fields of a shadowed route

Exit codes: 0 ok, 1 a user-facing error (one message on stderr, no traceback), 2 usage.
Edits touch only the new_percent values or consumers: entries (proxy/edgectl_yaml.py) and are
validated with the edge's own loader (proxy/routing_file.py: same size cap, YAML bounds and
placeholder rule), and for consumers: also with the consumers' own parse, before an atomic
replace, so neither process ever sees a half-written or invalid file. The admin token goes
only to a loopback address or over https unless ``--insecure-token`` says otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from functools import partial
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from pathlib import Path

from proxy.edgectl_admin import (
    DEFAULT_ADMIN_URL,
    AdminClient,
    AdminUnreachable,
    ReportError,
    TokenNotSent,
    render_shadow,
    render_status,
    status_json,
    summarise_metrics,
)
from proxy.edgectl_prometheus import PrometheusClient, PrometheusUnreachable, read_status
from proxy.rates import MAX_WINDOW_SECONDS
from proxy.edgectl_yaml import (
    Change,
    ConsumerChange,
    EditError,
    OwnerArg,
    format_percent,
    owner_percent,
    owner_text,
    parse_owner,
    parse_percent,
    route_names,
    set_consumers,
    set_percents,
    write_atomic,
)
from proxy.routing import GroupSpec, RoutingError, RoutingTable
from common.routing_file import RoutingFileError, decode
from proxy.routing_file import RoutingLoader
from common.routing_yaml import read_document
from common.consumer_routing import CONSUMER_EVENTS, ConsumersTable, parse_consumers_file
from common.settings import ROUTING_INTERPOLATION_VARS, Settings, SettingsError


class CtlError(Exception):
    """Printed as `edgectl: <message>` on stderr, exit 1."""


def _say(message: str) -> None:
    print(message, flush=True)


def _warn(message: str) -> None:
    print(f"edgectl: {message}", file=sys.stderr, flush=True)


# --- routing file --------------------------------------------------------------------------------


def _loader(settings: Settings) -> RoutingLoader:
    """The edge's own loader (proxy/routing_file.py), so edgectl accepts exactly what the edge accepts."""
    return RoutingLoader.for_settings(settings)


def _read(path: Path, loader: RoutingLoader) -> tuple[bytes, str]:
    """The file's bytes and text, read with the edge's bounds (regular file, size cap)."""
    try:
        data = loader.read(path).data
        return data, decode(path, data)
    except RoutingFileError as exc:
        raise CtlError(str(exc)) from None


def _route_summary(table: RoutingTable) -> list[str]:
    lines = []
    for name, r in table.routes.items():
        shadow = f"{format_percent(r.shadow.percent)}%" if r.shadow else "off"
        lines.append(
            f"{name}  {','.join(r.methods)}  {r.path}  new_percent={format_percent(r.new_percent)}"
            f"  shadow={shadow}  writes={'yes' if r.writes else 'no'}"
        )
    return lines


def _consumers_table(text: str, settings: Settings) -> ConsumersTable:
    """The consumers process's own parse (consumers/ownership.py ConsumersLoader makes the same call)."""
    return parse_consumers_file(
        text, settings.interpolation_env, interpolation_vars=ROUTING_INTERPOLATION_VARS, default_legacy_url=settings.legacy_url,
    )


def _consumer_summary(table: ConsumersTable) -> list[str]:
    return [
        f"consumer {event}  {owner_text(table.rule(event).new_percent)}" + ("" if event in table.consumers else "  (not listed: old shopping's)")
        for event in CONSUMER_EVENTS
    ]


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    path = Path(args.path or args.file or settings.routing_file)
    try:
        table, snapshot = _loader(settings).load(path)  # exactly what the edge runs on a reload
        consumers = _consumers_table(decode(path, snapshot.data), settings)  # and what the consumers run
    except RoutingFileError as exc:
        raise CtlError(str(exc)) from None
    except RoutingError as exc:
        raise CtlError(f"{path}: {exc}") from None
    for line in _route_summary(table) + _consumer_summary(consumers):
        _say(line)
    _say(f"{path}: valid, {len(table.routes)} routes, sha256 {table.source_hash}")
    return 0


def _routing_path(args: argparse.Namespace, settings: Settings) -> Path:
    """--file, else the file the running edge says it reads (when it answers), else the configured one.

    A configured file here that is not the edge's is refused rather than edited: run from a checkout
    against an edge started on another file, edgectl used to change the checkout's copy, which no
    edge reads, and only then warn."""
    if args.file:
        return Path(args.file)
    configured = Path(settings.routing_file)
    admin = getattr(args, "admin", DEFAULT_ADMIN_URL)
    try:
        described = AdminClient(admin, None).get("/_edge/routes")
    except AdminUnreachable:
        return configured
    body = described.json() if described.status == 200 else None
    found = body.get("routing_file") if isinstance(body, dict) else None
    if not isinstance(found, str) or not found:
        return configured
    served = Path(found)
    if configured.exists() and not (served.exists() and served.samefile(configured)):
        raise CtlError(f"the edge at {admin} reads {served}, not {configured.resolve()}: "
                       f"pass --file {served} to change what it serves (or --file {configured} to edit that copy)")
    return served


def _audit_path(path: Path, settings: Settings) -> Path:
    return Path(settings.edgectl_audit_log) if settings.edgectl_audit_log else Path(f"{path}.audit.jsonl")


def _audit(args: argparse.Namespace, settings: Settings, path: Path, entries: list[tuple[str, str, str, str]]) -> None:
    """Append one JSON line per changed value (kind, name, from, to); O_APPEND keeps concurrent writers' lines whole."""
    if not entries:
        return
    at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    who = getattr(args, "who", None) or settings.operator or "unknown"
    lines = "".join(
        json.dumps({"at": at, "who": who, "file": os.path.abspath(path), kind: name, "from": old, "to": new, "command": args.command_line}) + "\n"
        for kind, name, old, new in entries
    )
    audit = _audit_path(path, settings)
    try:
        fd = os.open(audit, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        # The change is already in force: say loudly that it went unrecorded rather than hide it.
        _warn(f"warning: the change was written but not recorded in {audit}: {exc.strerror or exc}")


def _show_diff(path: Path, text: str, new_text: str) -> None:
    diff = difflib.unified_diff(text.splitlines(keepends=True), new_text.splitlines(keepends=True), f"{path}", f"{path} (edited)")
    out = "".join(diff)
    _say(out.rstrip("\n") if out else "no change")
    _say("dry run: nothing written")


def _begin_edit(args: argparse.Namespace, settings: Settings) -> tuple[Path, RoutingLoader, bytes, str]:
    """The file to edit, the edge's loader, and the bytes and text the edit starts from."""
    path = _routing_path(args, settings)
    args.file = str(path)
    loader = _loader(settings)
    original, text = _read(path, loader)
    try:
        # The bounded reader first: the round-trip YAML library would expand an alias bomb.
        read_document(text)
    except RoutingError as exc:
        raise CtlError(f"{path}: {exc}") from None
    return path, loader, original, text


def _commit_edit(path: Path, loader: RoutingLoader, original: bytes, text: str, new_text: str, dry_run: bool = False) -> RoutingTable:
    """Check the edited text with the edge's loader, then replace the file unless someone changed it meanwhile."""
    try:
        table = loader.parse(new_text)
    except RoutingError as exc:
        raise CtlError(f"{path}: the edited file would be rejected, nothing written: {exc}") from None
    if dry_run:
        _show_diff(path, text, new_text)
        return table
    if new_text != text:
        try:
            write_atomic(path, new_text.encode("utf-8"), original)
        except EditError as exc:
            raise CtlError(str(exc)) from None
        except OSError as exc:
            raise CtlError(f"cannot write {path}: {exc.strerror or exc}") from None
    return table


def _edit(args: argparse.Namespace, settings: Settings, wanted_for: Callable[[str], Mapping[str, Decimal]]) -> tuple[list[Change], RoutingTable, str]:
    """Compute, validate and atomically write the edit; returns the changes, the new table and text."""
    path, loader, original, text = _begin_edit(args, settings)
    try:
        new_text, changes = set_percents(text, wanted_for(text))
    except (RoutingError, EditError) as exc:
        raise CtlError(f"{path}: {exc}") from None
    expect = getattr(args, "expect", None)
    if expect is not None and changes[0].old != expect:
        raise CtlError(
            f"{changes[0].route} is at {format_percent(changes[0].old)}, not the expected {format_percent(expect)}"
            " (someone else changed it?); nothing written"
        )
    table = _commit_edit(path, loader, original, text, new_text, args.dry_run)
    _report_changes(changes)
    if not args.dry_run:
        _audit(args, settings, path, [("route", c.route, format_percent(c.old), format_percent(c.new)) for c in changes if c.changed])
    return changes, table, new_text


def _report_changes(changes: list[Change]) -> None:
    for c in changes:
        if c.changed or len(changes) == 1:
            _say(f"{c.route}: {format_percent(c.old)} → {format_percent(c.new)}" + ("" if c.changed else " (unchanged)"))
    same = [c for c in changes if not c.changed]
    if len(changes) > 1 and same:
        _say(f"{len(same)} other route(s) already at {format_percent(same[0].new)}")


def _reload(args: argparse.Namespace, settings: Settings, written: str) -> int:
    """Ask the edge to load the file now; it would notice by itself within 1 s, so only a rejection fails."""
    client = _admin(args, settings)
    try:
        resp = client.post("/_edge/reload")
    except AdminUnreachable as exc:
        _warn(f"{exc}; the edge picks the file change up by itself within 1 s")
        return 0
    if resp.status in (401, 403):
        _warn(f"the edge refused the reload ({resp.status}; is EDGE_ADMIN_TOKEN set right?); it picks the file change up by itself within 1 s")
        return 0
    body = resp.json()
    if resp.status != 200 or not body.get("ok"):
        _warn(f"the edge rejected the file and keeps its previous table: {body.get('error') or resp.status}")
        return 1
    ours = hashlib.sha256(written.encode()).hexdigest()
    served = str(body.get("hash"))
    if served != ours:
        # Another edit landed after ours, or --admin names an edge that reads another file.
        _warn(f"the edge at {args.admin} serves hash {served[:12]}, not the file just written ({ours[:12]}): does it read {args.file or settings.routing_file}?")
        return 0
    _say(f"edge reloaded: {'new table in force' if body.get('changed') else 'already in force'} (hash {served[:12]})")
    return 0


def _admin(args: argparse.Namespace, settings: Settings) -> AdminClient:
    return AdminClient(args.admin, settings.admin_token, insecure_token=args.insecure_token)


def _check_reload_possible(args: argparse.Namespace, settings: Settings) -> None:
    """Before anything is written: refuse an edit whose reload would have to leak the token."""
    if not args.no_reload:
        _admin(args, settings).check_token_destination()


def _finish_edit(args: argparse.Namespace, settings: Settings, changes: list[Change], text: str) -> int:
    if not any(c.changed for c in changes) or args.no_reload or args.dry_run:
        return 0
    return _reload(args, settings, text)


def _groups(text: str, settings: Settings) -> Mapping[str, GroupSpec]:
    """The file's route groups as the edge reads them (an invalid file is refused further on anyway)."""
    try:
        return _loader(settings).parse(text).groups
    except RoutingError:
        return {}


def _members(name: str, groups: Mapping[str, GroupSpec]) -> list[str]:
    """The routes `name` stands for: a group's members, or the one route."""
    return list(groups[name].routes) if name in groups else [name]


def _group_of(route: str, groups: Mapping[str, GroupSpec]) -> GroupSpec | None:
    return next((g for g in groups.values() if route in g.routes), None)


def cmd_set(args: argparse.Namespace, settings: Settings) -> int:
    _check_reload_possible(args, settings)

    def wanted(text: str) -> Mapping[str, Decimal]:
        groups = _groups(text, settings)
        group = _group_of(args.route, groups)
        if group is not None and not group.allow_split:
            raise CtlError(
                f"{args.route} is in route group {group.name!r} ({', '.join(group.routes)}), whose routes move together:"
                f" run `edgectl set {group.name} {format_percent(args.percent)}`; nothing written"
            )
        return {name: args.percent for name in _members(args.route, groups)}

    changes, _, text = _edit(args, settings, wanted)
    return _finish_edit(args, settings, changes, text)


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    _check_reload_possible(args, settings)
    def wanted(text: str) -> Mapping[str, Decimal]:
        if args.all:
            return {name: Decimal(0) for name in route_names(text)}
        groups = _groups(text, settings)
        group = _group_of(args.route, groups)
        if group is not None and not group.allow_split:
            # A rollback is the way out of trouble: take the whole group back rather than refuse.
            _say(f"{args.route} is in route group {group.name!r}: rolling back the whole group")
            return {name: Decimal(0) for name in group.routes}
        return {name: Decimal(0) for name in _members(args.route, groups)}

    changes, table, text = _edit(args, settings, wanted)
    # Rollback only moves the percentage; internal testers listed in allow_new keep going to new.
    for c in changes:
        allow = table.routes[c.route].allow_new
        if allow:
            _warn(f"warning: {c.route} still sends allow_new users {', '.join(sorted(allow))} to new")
    return _finish_edit(args, settings, changes, text)


# --- consumers: who applies each event type ------------------------------------------------------


def cmd_consumer(args: argparse.Namespace, settings: Settings) -> int:
    path, loader, original, text = _begin_edit(args, settings)
    wanted: dict[str, OwnerArg] = {e: "legacy" for e in CONSUMER_EVENTS} if args.rollback_all else {args.event: args.owner}
    try:
        new_text, changes = set_consumers(text, wanted)
    except (RoutingError, EditError) as exc:
        raise CtlError(f"{path}: {exc}") from None
    if args.expect is not None and changes[0].old != owner_percent(args.expect):
        raise CtlError(
            f"{changes[0].event} is {owner_text(changes[0].old)}, not the expected {owner_text(owner_percent(args.expect))}"
            " (someone else changed it?); nothing written"
        )
    try:
        consumers = _consumers_table(new_text, settings)
    except RoutingError as exc:
        raise CtlError(f"{path}: the consumers would reject the edited file, nothing written: {exc}") from None
    wrong = [c.event for c in changes if consumers.rule(c.event).new_percent != c.new]
    if wrong:  # set_consumers checked it with the same rules; a second opinion costs nothing
        raise CtlError(f"{path}: the consumers would read {', '.join(wrong)} differently than asked; nothing written")
    _commit_edit(path, loader, original, text, new_text, args.dry_run)  # the edge reads the same file: it must accept it too
    if args.dry_run:
        return 0
    _report_consumer_changes(changes, path)
    _audit(args, settings, path, [("event", c.event, owner_text(c.old), owner_text(c.new)) for c in changes if c.changed])
    return 0


def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    path = _routing_path(args, settings)
    audit = _audit_path(path, settings)
    try:
        raw = audit.read_text(encoding="utf-8")
    except FileNotFoundError:
        raw = ""
    except OSError as exc:
        raise CtlError(f"cannot read {audit}: {exc.strerror or exc}") from None
    records = []
    for line in raw.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a full disk: the others still tell the story
        if isinstance(record, dict) and (args.route is None or args.route in (record.get("route"), record.get("event"))):
            records.append(record)
    records = records[-args.limit:] if args.limit else records
    if args.json:
        for record in records:
            _say(json.dumps(record))
        return 0
    if not records:
        _say(f"no changes recorded in {audit}")
    for r in records:
        _say(f"{r.get('at')}  {r.get('who')}  {r.get('route') or r.get('event')}: {r.get('from')} → {r.get('to')}  ({r.get('command')})")
    return 0


def _report_consumer_changes(changes: list[ConsumerChange], path: Path) -> None:
    for c in changes:
        if c.changed:
            _say(f"{c.event}: {owner_text(c.old)} → {c.shown}")
        elif len(changes) == 1:
            _say(f"{c.event}: {owner_text(c.old)} → {owner_text(c.new)} (unchanged)")
        if c.note:
            _say(f"  ({c.note})")
    same = [c for c in changes if not c.changed]
    if len(changes) > 1 and same:
        _say(f"{len(same)} other event type(s) already {owner_text(same[0].new)}")
    if not any(c.changed for c in changes):
        _say("nothing written")
        return
    # Nothing to call: the consumers have no reload endpoint, and the edge only shows consumers: in /_edge/routes.
    _say(
        f"the running consumers apply it within 1 s by themselves (they watch {path}; there is no reload to ask for);"
        " the edge does not act on consumers:, no edge reload needed"
    )


# --- live edge -----------------------------------------------------------------------------------


def _get_json(client: AdminClient, path: str) -> object:
    resp = client.get(path)
    if resp.status != 200:
        raise CtlError(f"GET {client.base_url}{path} answered {resp.status}")
    return resp.json()


def _status_from_prometheus(args: argparse.Namespace, client: PrometheusClient) -> str:
    described, summary, live = read_status(client, args.window)
    if args.json:
        return json.dumps(status_json(described, summary, live), sort_keys=True)
    return render_status(described, summary, live)


def _status_from_admin(args: argparse.Namespace, client: AdminClient) -> str:
    described = _get_json(client, "/_edge/routes")
    metrics = client.get("/metrics")
    if metrics.status != 200:
        raise CtlError(f"GET {client.base_url}/metrics answered {metrics.status}")
    if not isinstance(described, dict):
        raise CtlError("GET /_edge/routes did not answer a JSON object")
    resp = client.get("/_edge/rates", window=f"{args.window:g}")
    live: Mapping[str, Any] | None = None
    if resp.status == 404:
        pass  # an edge older than /_edge/rates: render_status says there are no live rates
    elif resp.status != 200:
        raise CtlError(f"GET {client.base_url}/_edge/rates answered {resp.status}")
    else:
        live = resp.json()
    summary = summarise_metrics(metrics.body.decode("utf-8", "replace"))
    if args.json:
        return json.dumps(status_json(described, summary, live), sort_keys=True)
    return render_status(described, summary, live)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    status_once: Callable[[], str]
    if args.prometheus:
        status_once = partial(_status_from_prometheus, args, PrometheusClient(args.prometheus))
    else:
        status_once = partial(_status_from_admin, args, _admin(args, settings))
    if args.watch is None:
        _say(status_once())
        return 0
    try:
        while True:
            shown = status_once()
            if not args.json and sys.stdout.isatty():
                shown = "\x1b[H\x1b[2J" + shown  # redraw in place on a terminal
            _say(shown)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def cmd_shadow(args: argparse.Namespace, settings: Settings) -> int:
    client = _admin(args, settings)
    described = _get_json(client, "/_edge/routes")
    known = described.get("routes") if isinstance(described, dict) else None
    if not isinstance(known, dict):
        raise CtlError("GET /_edge/routes did not answer a table of routes")
    if args.route not in known:
        # Without this a typo reads like a healthy route: "no shadow comparisons recorded".
        raise CtlError(f"unknown route {args.route!r}; the edge's routes are: {', '.join(sorted(known)) or 'none'}")
    resp = client.get("/_edge/shadow", route=args.route)
    if resp.status == 404:
        raise CtlError("shadow report not available on this edge")
    if resp.status != 200:
        raise CtlError(f"GET {client.base_url}/_edge/shadow answered {resp.status}")
    _say(render_shadow(resp.json(), args.route, top=args.top))
    return 0


# --- command line --------------------------------------------------------------------------------


def _percent_arg(raw: str) -> Decimal:
    try:
        return parse_percent(raw)
    except EditError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _window_arg(raw: str) -> float:
    text = raw.strip().lower()
    factor = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if factor else text) * (factor or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r}: a window is seconds, 30s, 2m or 1h") from None
    if not 0 < seconds <= MAX_WINDOW_SECONDS:
        raise argparse.ArgumentTypeError(f"{raw!r}: the window must be over 0 and at most {MAX_WINDOW_SECONDS // 60} min")
    return seconds


def _watch_arg(raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{raw!r}: refresh every 0.1 to 3600 seconds")
    return seconds


def _owner_arg(raw: str) -> OwnerArg:
    try:
        return parse_owner(raw)
    except EditError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    file_opt = argparse.ArgumentParser(add_help=False)
    file_opt.add_argument("--file", help="routing.yaml to edit (default: $EDGE_ROUTING_FILE or routing.yaml)")
    admin_opt = argparse.ArgumentParser(add_help=False)
    admin_opt.add_argument("--admin", default=DEFAULT_ADMIN_URL, metavar="URL", help=f"the edge's admin API (default {DEFAULT_ADMIN_URL})")
    admin_opt.add_argument(
        "--insecure-token", action="store_true",
        help="send EDGE_ADMIN_TOKEN even over plain http to a non-loopback --admin URL (it is sent only to loopback or https otherwise)",
    )
    reload_opt = argparse.ArgumentParser(add_help=False, parents=[file_opt, admin_opt])
    reload_opt.add_argument("--no-reload", action="store_true", help="only write the file (the edge still notices it within 1 s)")
    edit_opt = argparse.ArgumentParser(add_help=False)
    edit_opt.add_argument("--dry-run", action="store_true", help="print the diff of the edit and write nothing")
    edit_opt.add_argument("--who", help="who is making the change, for the audit log (default $SUDO_USER or $USER)")

    p = argparse.ArgumentParser(prog="edgectl", description="Operate the shopping edge: routing.yaml edits and live status.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", parents=[file_opt], help="check a routing file as the edge would")
    v.add_argument("path", nargs="?", metavar="FILE", help="file to check (default: --file, $EDGE_ROUTING_FILE or routing.yaml)")
    v.set_defaults(run=cmd_validate)

    s = sub.add_parser("set", parents=[reload_opt, edit_opt], help="set a route's new_percent")
    s.add_argument("route", metavar="ROUTE")
    s.add_argument("percent", metavar="PERCENT", type=_percent_arg, help="0..100, at most two decimals (0.5, 12.25)")
    s.add_argument("--expect", metavar="CURRENT", type=_percent_arg, help="refuse unless the current value is CURRENT")
    s.set_defaults(run=cmd_set)

    r = sub.add_parser("rollback", parents=[reload_opt, edit_opt], help="set new_percent to 0 for a route or every route")
    r.add_argument("route", nargs="?", metavar="ROUTE")
    r.add_argument("--all", action="store_true", help="every route in the file")
    r.set_defaults(run=cmd_rollback)

    c = sub.add_parser(
        "consumer", parents=[file_opt, admin_opt, edit_opt], help="set who applies an event type (consumers:), or --rollback-all",
        description="Set routing.yaml consumers:EVENT. The running consumers apply it within 1 s; nothing to reload.",
    )
    c.add_argument("event", nargs="?", metavar="EVENT", help=f"one of {', '.join(CONSUMER_EVENTS)}")
    c.add_argument("owner", nargs="?", metavar="OWNER", type=_owner_arg,
                   help="legacy, new, or a percentage 0..100 of orders on new (written as {new_percent: N})")
    c.add_argument("--expect", metavar="CURRENT", type=_owner_arg, help="refuse unless the current owner is CURRENT (legacy, new or N)")
    c.add_argument("--rollback-all", action="store_true", help="every event type back to legacy (old shopping)")
    c.set_defaults(run=cmd_consumer)

    h = sub.add_parser("history", parents=[file_opt, admin_opt], help="changes edgectl made: who, when, from → to")
    h.add_argument("--route", metavar="R", help="only this route (or consumers: event type)")
    h.add_argument("--limit", type=int, default=20, metavar="N", help="the last N changes (default 20, 0: all)")
    h.add_argument("--json", action="store_true", help="one JSON object a line, as recorded")
    h.set_defaults(run=cmd_history)

    st = sub.add_parser("status", parents=[admin_opt], help="routes, traffic, error and mismatch rates of a running edge")
    st.add_argument("--window", type=_window_arg, default=60.0, metavar="WINDOW",
                    help="rates over the last WINDOW: 30s, 2m or plain seconds (default 1m)")
    st.add_argument("--watch", type=_watch_arg, nargs="?", const=2.0, default=None, metavar="SECONDS",
                    help="refresh every SECONDS (default 2) until Ctrl-C")
    st.add_argument("--json", action="store_true", help="one JSON object (per refresh with --watch)")
    st.add_argument("--prometheus", metavar="URL",
                    help="read the rates from this Prometheus server (PromQL over every edge it scrapes) instead of --admin;"
                         " the window must hold two scrapes")
    st.set_defaults(run=cmd_status)

    sh = sub.add_parser("shadow", parents=[admin_opt], help="top mismatching fields of a route, with an example each")
    sh.add_argument("route", metavar="ROUTE")
    sh.add_argument("--top", type=int, default=10, help="how many fields to show (default 10)")
    sh.set_defaults(run=cmd_shadow)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.command_line = " ".join(["edgectl", *(sys.argv[1:] if argv is None else argv)])
    if args.command == "rollback" and args.all == bool(args.route):
        parser.error("rollback takes either ROUTE or --all")
    if args.command == "consumer":
        if args.rollback_all and (args.event or args.owner is not None or args.expect is not None):
            parser.error("consumer takes either EVENT OWNER [--expect CURRENT] or --rollback-all alone")
        if not args.rollback_all and (args.event is None or args.owner is None):
            parser.error("consumer takes EVENT OWNER (legacy, new or a percentage), or --rollback-all")
    try:
        settings = Settings.from_env()
        return int(args.run(args, settings))
    except SettingsError as exc:
        _warn(f"bad setting: {exc}")
    except (CtlError, ReportError, AdminUnreachable, PrometheusUnreachable, TokenNotSent) as exc:
        _warn(str(exc))
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
