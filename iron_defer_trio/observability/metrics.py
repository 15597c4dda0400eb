"""Every metric iron-defer-trio records, defined once.

Names are the exact Prometheus names (the Prometheus exporter appends ``_total`` and
``_seconds`` only when missing, so nothing is doubled). Embedded in an application, the
instruments come from the application's meter provider (the global one unless another is
passed to ``open_engine``); iron-defer-trio never installs a provider itself. ``serve``
creates its own and renders it at ``GET /metrics``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Observation

from iron_defer_trio._version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry.metrics import MeterProvider

#: Seconds from 1 ms to 10 min: task durations and queue waits span that whole range.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric as documented in docs/reference/metrics.md."""

    name: str
    kind: str  # counter | histogram | gauge
    description: str
    labels: tuple[str, ...]
    unit: str = ""


TASK_DURATION = MetricSpec(
    "iron_defer_task_duration_seconds",
    "histogram",
    "Time from the start of an attempt to its outcome.",
    ("queue", "kind", "outcome"),
    "s",
)
QUEUE_WAIT = MetricSpec(
    "iron_defer_queue_wait_seconds",
    "histogram",
    "Time a task waited past its scheduled_at (its enqueue time when not scheduled) before an "
    "attempt started.",
    ("queue",),
    "s",
)
TASKS_ENQUEUED = MetricSpec(
    "iron_defer_tasks_enqueued_total", "counter", "Tasks enqueued.", ("queue", "kind")
)
TASK_ATTEMPTS = MetricSpec(
    "iron_defer_task_attempts_total", "counter", "Attempts started (claims).", ("queue", "kind")
)
TASK_FAILURES = MetricSpec(
    "iron_defer_task_failures_total",
    "counter",
    "Attempts that failed, whether retried or final.",
    ("queue", "kind"),
)
TASK_RETRIES = MetricSpec(
    "iron_defer_task_retries_total",
    "counter",
    "Failed attempts that will be retried (failures minus retries = tasks failed for good).",
    ("queue", "kind"),
)
TASKS_COMPLETED = MetricSpec(
    "iron_defer_tasks_completed_total", "counter", "Tasks completed.", ("queue", "kind")
)
LEASE_RECOVERIES = MetricSpec(
    "iron_defer_lease_recoveries_total",
    "counter",
    "Running tasks whose lease expired, recovered by the sweeper (status: pending again, or "
    "failed when it was the last attempt).",
    ("queue", "status"),
)
WORKER_UTILIZATION = MetricSpec(
    "iron_defer_worker_utilization",
    "gauge",
    "Tasks running in this engine divided by the queue's concurrency (0..1).",
    ("queue", "worker_id"),
)
TASKS_PENDING = MetricSpec(
    "iron_defer_tasks_pending",
    "gauge",
    "Pending tasks per queue (due or scheduled), refreshed every observability.gauge_interval.",
    ("queue",),
)
TASKS_RUNNING = MetricSpec(
    "iron_defer_tasks_running",
    "gauge",
    "Running tasks per queue across all engines, refreshed every observability.gauge_interval.",
    ("queue",),
)
POOL_SIZE = MetricSpec(
    "iron_defer_db_pool_size", "gauge", "Connections open in the engine's pool.", ("worker_id",)
)
POOL_IDLE = MetricSpec(
    "iron_defer_db_pool_idle", "gauge", "Pooled connections not in use.", ("worker_id",)
)
POOL_IN_USE = MetricSpec(
    "iron_defer_db_pool_in_use", "gauge", "Pooled connections in use.", ("worker_id",)
)
POOL_WAITING = MetricSpec(
    "iron_defer_db_pool_waiting",
    "gauge",
    "Database calls waiting for a free pooled connection (above 0 for long: raise "
    "database.max_connections).",
    ("worker_id",),
)

TASKS_DELETED = MetricSpec(
    "iron_defer_tasks_deleted_total",
    "counter",
    "Finished tasks the sweeper deleted because they were older than their status's "
    "retention (status: completed, failed or cancelled).",
    ("status",),
)

#: Every metric, for the reference page and its test.
ALL: tuple[MetricSpec, ...] = (
    TASK_DURATION,
    QUEUE_WAIT,
    TASKS_ENQUEUED,
    TASK_ATTEMPTS,
    TASK_FAILURES,
    TASK_RETRIES,
    TASKS_COMPLETED,
    LEASE_RECOVERIES,
    WORKER_UTILIZATION,
    TASKS_PENDING,
    TASKS_RUNNING,
    POOL_SIZE,
    POOL_IDLE,
    POOL_IN_USE,
    POOL_WAITING,
    TASKS_DELETED,
)


class GaugeSource(Protocol):
    """What an engine exposes to the gauges (read from memory at each collection)."""

    def utilization(self) -> Iterable[tuple[dict[str, str], float]]:
        """(labels, running / concurrency) per queue."""
        ...

    def task_counts(self) -> dict[str, dict[str, int]] | None:
        """The last refreshed ``{queue: {"pending": n, "running": m}}``, None if unknown."""
        ...

    def pool(self) -> dict[str, float]:
        """Pool ``size``, ``idle``, ``in_use`` and ``waiting``."""
        ...

    @property
    def worker_id(self) -> str:
        """The engine's id (a label of its per-engine gauges)."""
        ...


class Metrics:
    """The instruments of one meter provider; get them with :func:`metrics_for`."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter("iron_defer_trio", __version__)
        self._sources: list[GaugeSource] = []
        self.task_duration = meter.create_histogram(
            TASK_DURATION.name,
            unit=TASK_DURATION.unit,
            description=TASK_DURATION.description,
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.queue_wait = meter.create_histogram(
            QUEUE_WAIT.name,
            unit=QUEUE_WAIT.unit,
            description=QUEUE_WAIT.description,
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.tasks_enqueued = meter.create_counter(
            TASKS_ENQUEUED.name, description=TASKS_ENQUEUED.description
        )
        self.task_attempts = meter.create_counter(
            TASK_ATTEMPTS.name, description=TASK_ATTEMPTS.description
        )
        self.task_failures = meter.create_counter(
            TASK_FAILURES.name, description=TASK_FAILURES.description
        )
        self.task_retries = meter.create_counter(
            TASK_RETRIES.name, description=TASK_RETRIES.description
        )
        self.tasks_completed = meter.create_counter(
            TASKS_COMPLETED.name, description=TASKS_COMPLETED.description
        )
        self.lease_recoveries = meter.create_counter(
            LEASE_RECOVERIES.name, description=LEASE_RECOVERIES.description
        )
        self.tasks_deleted = meter.create_counter(
            TASKS_DELETED.name, description=TASKS_DELETED.description
        )
        # Observable instruments exist once per provider (a second registration of the same
        # name would be ignored with its callback); engines come and go as sources instead.
        gauges: list[tuple[MetricSpec, Callable[[], list[Observation]]]] = [
            (WORKER_UTILIZATION, self._utilization),
            (TASKS_PENDING, lambda: self._counts("pending")),
            (TASKS_RUNNING, lambda: self._counts("running")),
            (POOL_SIZE, lambda: self._pool("size")),
            (POOL_IDLE, lambda: self._pool("idle")),
            (POOL_IN_USE, lambda: self._pool("in_use")),
            (POOL_WAITING, lambda: self._pool("waiting")),
        ]
        for spec, read in gauges:
            meter.create_observable_gauge(
                spec.name, callbacks=[_callback(read)], description=spec.description
            )

    def add_source(self, source: GaugeSource) -> None:
        """Start reporting an engine's gauges."""
        self._sources.append(source)

    def remove_source(self, source: GaugeSource) -> None:
        """Stop reporting an engine's gauges (it stopped)."""
        if source in self._sources:
            self._sources.remove(source)

    def _utilization(self) -> list[Observation]:
        return [
            Observation(value, labels)
            for source in list(self._sources)
            for labels, value in source.utilization()
        ]

    def _counts(self, status: str) -> list[Observation]:
        # Every engine reads the same table; the first one with fresh counts speaks for all.
        for source in list(self._sources):
            counts = source.task_counts()
            if counts is not None:
                return [
                    Observation(by_status.get(status, 0), {"queue": queue})
                    for queue, by_status in sorted(counts.items())
                ]
        return []

    def _pool(self, key: str) -> list[Observation]:
        return [
            Observation(source.pool()[key], {"worker_id": source.worker_id})
            for source in list(self._sources)
        ]


def _callback(
    read: Callable[[], list[Observation]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return read()

    return callback


_BY_PROVIDER: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(provider: MeterProvider | None = None) -> Metrics:
    """The instruments of ``provider`` (default: the global meter provider), created once."""
    the_provider = provider or otel_metrics.get_meter_provider()
    metrics = _BY_PROVIDER.get(the_provider)
    if metrics is None:
        metrics = Metrics(the_provider)
        _BY_PROVIDER[the_provider] = metrics
    return metrics
