"""A process's /metrics, read the way Prometheus reads it (prometheus_client's own text parser)."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def of(cls, url: str, timeout: float = 5) -> Scrape:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
        return cls({
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
        })

    @property
    def names(self) -> set[str]:
        """Every series name exposed (histograms as their _bucket/_count/_sum, counters with _total)."""
        return {name for name, _ in self.samples}

    def total(self, name: str, **labels: str) -> float:
        """The sum of the series `name` whose labels include `labels` (0 when there is none)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)
