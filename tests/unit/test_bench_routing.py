"""The benches' routing files load as the edge loads them, with the routes each bench measures at 100 % new.

`make bench-pay` writes its own routing.yaml from the repo's; when route groups came (issue 12) it went on
setting the pay routes alone, the edge refused the file at start ("the routes of group 'checkout' must
have one new_percent") and the bench ended before measuring anything.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from proxy.routing import parse_routing

ROOT = Path(__file__).resolve().parents[2]
PAY_ROUTES = ("paypal_pay", "paypal_finished", "adyen_pay", "payment_callback")


def test_the_pay_bench_routing_loads_with_the_pay_routes_and_their_group_at_100(tmp_path: Path) -> None:
    path = tmp_path / "routing-pay.yaml"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "paybench.py"), "--write-routing", str(path)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    table = parse_routing(path.read_text())  # what the edge does at start: RoutingError if it would refuse
    assert {name: table.routes[name].new_percent for name in PAY_ROUTES} == dict.fromkeys(PAY_ROUTES, Decimal(100))
    for group in table.groups.values():
        if not group.allow_split:
            assert len({table.routes[r].new_percent for r in group.routes}) == 1, group


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.yaml")), ids=lambda p: p.name)
def test_every_routing_file_of_the_benches_loads(path: Path) -> None:
    parse_routing(path.read_text())
