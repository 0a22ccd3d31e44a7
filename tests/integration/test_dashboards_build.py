"""The committed Grafana dashboards are exactly what grafana/build.py generates (`make dashboards`).

The JSON in grafana/dashboards/ is generated output: a hand edit, or a change to build.py without a
regeneration, fails here with the diff.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.monitoring import DASHBOARDS, GRAFANA, REPO

BUILD = GRAFANA / "build.py"


def build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_committed_dashboards_are_what_the_generator_writes(tmp_path: Path) -> None:
    done = build("--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    generated = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in (GRAFANA / "dashboards").glob("*.json")}
    assert sorted(generated) == sorted(committed) == sorted(p.name for p in DASHBOARDS.values())
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert stale == [], f"grafana/dashboards/{stale} differ from grafana/build.py's output: run `make dashboards`"
    # The generator is deterministic: a second run writes the same bytes (no ids or timestamps drawn).
    again = tmp_path / "again"
    assert build("--out", str(again)).returncode == 0
    assert {p.name: p.read_text(encoding="utf-8") for p in again.glob("*.json")} == generated


def test_check_mode_names_a_hand_edited_dashboard(tmp_path: Path) -> None:
    assert build("--out", str(tmp_path)).returncode == 0
    assert build("--out", str(tmp_path), "--check").returncode == 0
    edited = tmp_path / "payments.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace("Payment success share by PSP", "Success"), encoding="utf-8")
    (tmp_path / "stray.json").write_text("{}\n", encoding="utf-8")
    done = build("--out", str(tmp_path), "--check")
    assert done.returncode == 1
    assert "-    \"title\": \"Success\"" in done.stdout or '"title": "Success"' in done.stdout, done.stdout
    assert "payments.json" in done.stderr and "stray.json" in done.stderr, done.stderr
