"""What a newcomer types from the README: the demo stops by itself, `make run` takes stack.py's options."""
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is made.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_demo_traffic_stops_after_fifteen_minutes_by_default() -> None:
    parser = _script("demo_traffic").build_parser()
    assert parser.parse_args([]).seconds == 900
    assert parser.parse_args(["--duration", "60"]).seconds == 60


def test_make_passes_run_args_and_demo_args_on() -> None:
    def dry(*argv: str) -> str:
        return subprocess.run(["make", "-n", "-W", "pyproject.toml", *argv], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout

    assert "scripts/stack.py --fresh --port-offset 100" in dry("run", "RUN_ARGS=--fresh --port-offset 100")
    assert "scripts/demo_traffic.py --seconds 60" in dry("demo-traffic", "DEMO_ARGS=--seconds 60")
