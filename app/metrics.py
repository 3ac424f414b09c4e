"""Prometheus metrics kept in Redis, so the API can report what every worker process did."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from redis import Redis
from rq import Queue
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)

from app.queue import text_hash

PREFIX = "soundedit:metrics:"
EDIT_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
STEP_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 20.0)
BATCH_EDITS_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
HISTOGRAMS = {
    "edit_seconds": ("Wall time of an edit in the worker", EDIT_SECONDS_BUCKETS),
    "step_seconds": ("Wall time of one optimisation step", STEP_SECONDS_BUCKETS),
    "batch_edits": ("Edits optimised together in one batch", BATCH_EDITS_BUCKETS),
}


def observe(redis: Redis, name: str, value: float) -> None:
    """Add ``value`` to histogram ``name`` (cumulative buckets, as Prometheus reads them)."""
    _, buckets = HISTOGRAMS[name]
    key = PREFIX + name
    with redis.pipeline() as pipe:
        for bound in buckets:
            if value <= bound:
                pipe.hincrby(key, f"le:{bound}", 1)
        pipe.hincrby(key, "count", 1)
        pipe.hincrbyfloat(key, "sum", value)
        pipe.execute()


def count_failure(redis: Redis, kind: str) -> None:
    redis.hincrby(PREFIX + "failures", kind, 1)


class RedisCollector(Collector):
    """Reads queue, registry, worker and histogram state from Redis at scrape time."""

    def __init__(self, redis: Redis, queues: Sequence[Queue], worker_prefix: str) -> None:
        self.redis = redis
        self.queues = queues
        self.worker_prefix = worker_prefix

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "soundedit_queue_depth", "Edits waiting in the queue", labels=["queue"]
        )
        by_status = GaugeMetricFamily(
            "soundedit_edits", "Edits known to Redis by status", labels=["queue", "status"]
        )
        for queue in self.queues:
            depth.add_metric([queue.name], queue.count)
            registries = {
                "running": StartedJobRegistry(queue=queue),
                "succeeded": FinishedJobRegistry(queue=queue),
                "failed": FailedJobRegistry(queue=queue),
                "canceled": CanceledJobRegistry(queue=queue),
            }
            by_status.add_metric([queue.name, "queued"], queue.count)
            for status, registry in registries.items():
                by_status.add_metric([queue.name, status], registry.count)
        yield depth
        yield by_status

        workers = sum(1 for _ in self.redis.scan_iter(match=self.worker_prefix + "*"))
        yield GaugeMetricFamily("soundedit_workers", "Live edit workers", value=workers)

        failures = CounterMetricFamily(
            "soundedit_failures", "Failed edits by kind", labels=["kind"]
        )
        for kind, count in text_hash(self.redis, PREFIX + "failures").items():
            failures.add_metric([kind], float(count))
        yield failures

        for name, (doc, buckets) in HISTOGRAMS.items():
            raw = text_hash(self.redis, PREFIX + name)
            cumulative = [(str(b), float(raw.get(f"le:{b}", 0))) for b in buckets]
            cumulative.append(("+Inf", float(raw.get("count", 0))))
            yield HistogramMetricFamily(
                f"soundedit_{name}", doc, buckets=cumulative, sum_value=float(raw.get("sum", 0))
            )


def render(redis: Redis, queues: Sequence[Queue], worker_prefix: str) -> bytes:
    from prometheus_client import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(redis, queues, worker_prefix))
    return generate_latest(registry)
