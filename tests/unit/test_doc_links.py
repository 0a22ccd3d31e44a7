"""Every relative link in README.md and docs/*.md leads to a file of the repo (a clone has nothing else)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_resolve_inside_the_repo() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.exists() or ROOT not in path.parents:
                broken.append(f"{doc.name}: {target}")
    assert not broken


def test_the_readme_links_the_spec_copies_and_they_are_all_there() -> None:
    links = set(LINK.findall((ROOT / "README.md").read_text(encoding="utf-8")))
    for name in ("edge", "domain", "legacy-api", "operations", "architecture"):
        assert f"docs/spec/{name}.md" in links
        assert (ROOT / "docs" / "spec" / f"{name}.md").is_file()
