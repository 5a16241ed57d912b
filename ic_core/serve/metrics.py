"""Prometheus metrics of one server (a registry of its own, so two apps in a process never mix)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 64)


@dataclass
class ServeMetrics:
    """Decisions by outcome, request latency by endpoint, refused requests by reason, queue depth, batch sizes."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.decisions = Counter("ic_gate_decisions", "Gate decisions by outcome and endpoint.",
                                 ["decision", "endpoint"], registry=self.registry)
        self.latency = Histogram("ic_request_latency_seconds", "Time from request to response, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.check_latency = Histogram("ic_gate_check_seconds", "Time of the pre-generation check alone.",
                                       buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.refused = Counter("ic_requests_refused", "Requests answered with an error, by HTTP status.",
                               ["status"], registry=self.registry)
        self.batch_size = Histogram("ic_gate_batch_size", "Gate checks read in one forward pass (micro-batching).",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("ic_queue_pending", "Requests running or waiting for the model worker.",
                                 registry=self.registry)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
