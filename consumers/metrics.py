"""The consumers' Prometheus metrics. Names and labels are a contract (shared/spec/edge.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("processed", "duplicate", "retried", "dead_lettered", "skipped_not_owner", "forwarded_legacy")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, topics: tuple[str, ...] = ()) -> None:
        self.registry = registry
        self.events = Counter(
            "consumer_events_total", "Kafka events by outcome", ("topic", "outcome"), registry=registry,
        )
        self.lag = Gauge(
            "consumer_lag", "Messages in a partition not yet applied (high watermark − next offset)",
            ("topic", "partition"), registry=registry,
        )
        self.processing = Histogram(
            "consumer_processing_seconds", "Time to apply one event, DB commit included", ("topic",),
            buckets=_BUCKETS, registry=registry,
        )
        # Zero-valued children from the start: the first dead letter is an increase alerts can see.
        for topic in topics:
            for outcome in OUTCOMES:
                self.events.labels(topic, outcome)
