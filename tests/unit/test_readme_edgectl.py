"""Every `edgectl …` line of the README's code blocks parses with the real edgectl parser."""
import re
import shlex
from pathlib import Path

import pytest

from proxy.edgectl import _parser

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("edgectl ")]


def test_the_readme_shows_edgectl_commands() -> None:
    assert len(_readme_commands()) >= 5


@pytest.mark.parametrize("line", _readme_commands())
def test_each_readme_edgectl_line_parses(line: str) -> None:
    _parser().parse_args(shlex.split(line)[1:])
