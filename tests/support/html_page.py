"""Reading the shadow diff page as a person does: its tables as rows of cell text, its links,
its example sections (tests/integration/test_edge_diff_page.py, and the DOM Chromium renders
in tests/e2e/test_diff_page_browser.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Link:
    href: str
    text: str
    classes: tuple[str, ...]


@dataclass
class Section:
    """One ``<section class=example>``: its text, the rows of its diff table, its marked lines per side."""

    id: str
    text: str = ""
    diff_rows: list[list[str]] = field(default_factory=list)
    marked: dict[str, list[str]] = field(default_factory=dict)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[Link] = []
        self.sections: list[Section] = []
        self.labels: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._link: tuple[str, tuple[str, ...], list[str]] | None = None
        self._section: Section | None = None
        self._side: str | None = None
        self._mark: list[str] | None = None
        self._label: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = tuple(a.get("class", "").split())
        if tag == "table":
            self._table = classes[0] if classes else ""
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "a":
            self._link = (a.get("href", ""), classes, [])
        elif tag == "section" and "example" in classes:
            self._section = Section(a.get("id", ""))
            self.sections.append(self._section)
        elif tag == "div" and "side" in classes and len(classes) > 1:
            self._side = classes[1]
        elif tag == "mark" and self._side is not None and self._section is not None:
            self._mark = []
        elif tag == "span" and "side-label" in classes:
            self._label = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            if self._section is not None and self._table == "diffs":
                self._section.diff_rows.append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "a" and self._link is not None:
            href, classes, text = self._link
            self.links.append(Link(href, "".join(text).strip(), classes))
            self._link = None
        elif tag == "section":
            self._section = None
            self._side = None
        elif tag == "mark" and self._mark is not None and self._section is not None and self._side is not None:
            self._section.marked.setdefault(self._side, []).append("".join(self._mark))
            self._mark = None
        elif tag == "span" and self._label is not None:
            self.labels.append("".join(self._label).strip())
            self._label = None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._mark, self._label, self._link[2] if self._link else None):
            if sink is not None:
                sink.append(data)
        if self._section is not None:
            self._section.text += data


@dataclass
class Page:
    text: str
    tables: dict[str, list[list[str]]]
    links: list[Link]
    sections: list[Section]
    side_labels: list[str]

    @classmethod
    def parse(cls, text: str) -> Page:
        p = _Parser()
        p.feed(text)
        p.close()
        return cls(text, p.tables, p.links, p.sections, p.labels)

    def link(self, cls_name: str, text: str | None = None) -> Link:
        """The first link with this class (and this text when given); AssertionError if none."""
        for link in self.links:
            if cls_name in link.classes and (text is None or link.text == text):
                return link
        raise AssertionError(f"no <a class={cls_name}> {text or ''} on the page: {[(x.classes, x.text) for x in self.links]}")

    def has_link(self, cls_name: str) -> bool:
        return any(cls_name in link.classes for link in self.links)

    def field_row(self, name: str) -> dict[str, str]:
        """The fields table's row of ``name``, keyed by the column names (since-start and window ones prefixed)."""
        columns = ["field", "verdict", "rounding", "beyond", "rounding rate", "beyond rate",
                   "window compared", "window rounding", "window beyond", "window rounding rate",
                   "window beyond rate", "max |Δ|", "noise rate", "examples"]
        for row in self.tables.get("fields", [])[2:]:
            if row and row[0] == name:
                return dict(zip(columns, row))
        raise AssertionError(f"no row for {name} in {self.tables.get('fields')}")
