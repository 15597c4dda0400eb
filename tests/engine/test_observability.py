"""Metrics, lifecycle logs and traces of a running engine, read through an in-memory metric
reader, structlog's capture_logs and an in-memory span exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import structlog
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import iron_defer_trio as iron_defer
from iron_defer_trio.observability import metrics as names
from iron_defer_trio.observability.logs import configure_json_logging
from tests.conftest import fast_settings

if TYPE_CHECKING:
    import uuid

    from tests.pg import Db

SECRET = "s3cr3t-payload-value"


class Work(iron_defer.Task):
    """Succeeds, fails until ``fail_until``, or fails for good."""

    KIND: ClassVar[str] = "work"
    mode: str = "ok"
    fail_until: int = 0
    secret: str = SECRET

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if self.mode == "fatal":
            raise iron_defer.TaskError("declined", retry=False)
        if ctx.attempt < self.fail_until:
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        if self.mode == "hang":
            await trio.sleep_forever()


class Telemetry:
    """An engine's metrics and spans, in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def total(self, name: str, **labels: str) -> float:
        return sum(  # type: ignore[no-any-return]  # data points are untyped here
            p.value
            for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in labels.items())
        )

    def histogram_count(self, name: str, **labels: str) -> int:
        return sum(
            p.count
            for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in labels.items())
        )


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


def _open(database_url: str, telemetry: Telemetry, **worker: Any) -> Any:
    settings = fast_settings(database_url, **worker).model_copy(
        update={
            "observability": iron_defer.Settings.build(
                observability={"gauge_interval": 0.1}
            ).observability
        }
    )
    return iron_defer.open_engine(
        settings,
        tasks=[Work],
        queues={"q": 4},
        migrate=False,
        meter_provider=telemetry.meter_provider,
        tracer_provider=telemetry.tracer_provider,
    )


async def _until_final(engine: iron_defer.Engine, *ids: uuid.UUID) -> None:
    for task_id in ids:
        while not (await engine.get(task_id)).status.is_final:
            await engine.wait_until_idle(include_scheduled=True)


async def test_counters_and_histograms_count_every_outcome(
    database_url: str, telemetry: Telemetry, db: Db
) -> None:
    """Attempts, completions, failures, retries, recoveries, enqueues and durations are
    counted with their queue/kind (and outcome/status) labels."""
    with trio.fail_after(30):
        async with _open(database_url, telemetry) as engine:
            ok = await engine.enqueue("q", Work())
            flaky = await engine.enqueue("q", Work(fail_until=3), max_attempts=3)
            fatal = await engine.enqueue("q", Work(mode="fatal"))
            await _until_final(engine, ok.id, flaky.id, fatal.id)
            # a lease that expires under a "dead" worker is recovered by the sweeper
            orphan = await engine.enqueue("q", Work(), scheduled_at=_tomorrow())
            await db.execute(
                "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, "
                "claimed_by = gen_random_uuid(), claimed_until = now() - interval '1 s', "
                "started_at = now() WHERE id = $1",
                orphan.id,
            )
            while telemetry.total(names.LEASE_RECOVERIES.name) < 1:
                await trio.sleep(0.02)
            await _until_final(engine, orphan.id)
    t = telemetry
    labels = {"queue": "q", "kind": "work"}
    assert t.total(names.TASKS_ENQUEUED.name, **labels) == 4
    assert t.total(names.TASK_ATTEMPTS.name, **labels) == 6  # 1 + 3 + 1 + 1 (orphan rerun)
    assert t.total(names.TASKS_COMPLETED.name, **labels) == 3
    assert t.total(names.TASK_FAILURES.name, **labels) == 3  # 2 retried + 1 fatal
    assert t.total(names.TASK_RETRIES.name, **labels) == 2
    assert t.total(names.LEASE_RECOVERIES.name, queue="q", status="pending") == 1
    assert t.histogram_count(names.TASK_DURATION.name, outcome="completed", **labels) == 3
    assert t.histogram_count(names.TASK_DURATION.name, outcome="retry", **labels) == 2
    assert t.histogram_count(names.TASK_DURATION.name, outcome="failed", **labels) == 1
    assert t.histogram_count(names.QUEUE_WAIT.name, queue="q") == 6


async def test_gauges_report_utilization_counts_and_the_pool(
    database_url: str, telemetry: Telemetry
) -> None:
    """Utilization per queue and engine, pending/running per queue (from the refreshed
    cache), and the pool's connections."""
    with trio.fail_after(30):
        async with _open(database_url, telemetry, shutdown_timeout=0.1) as engine:
            await engine.enqueue_many("q", [Work(mode="hang") for _ in range(2)])
            await engine.enqueue("idle", Work(), scheduled_at=_tomorrow())
            while telemetry.total(names.TASKS_RUNNING.name, queue="q") < 2:
                await trio.sleep(0.02)
            utilization = {
                p.attributes["queue"]: p.value
                for p in telemetry.points(names.WORKER_UTILIZATION.name)
                if p.attributes["worker_id"] == str(engine.worker_id)
            }
            pending_idle = telemetry.total(names.TASKS_PENDING.name, queue="idle")
            pool_size = telemetry.total(names.POOL_SIZE.name, worker_id=str(engine.worker_id))
            waiting = telemetry.points(names.POOL_WAITING.name)
    assert utilization == {"q": 0.5}
    assert pending_idle == 1
    assert pool_size >= 1
    assert waiting
    assert waiting[0].value == 0


async def test_utilization_is_running_over_concurrency(
    database_url: str, telemetry: Telemetry
) -> None:
    """Two tasks running on a queue of four is 0.5."""
    settings = fast_settings(database_url, shutdown_timeout=0.1)
    with trio.fail_after(30):
        async with iron_defer.open_engine(
            settings,
            tasks=[Work],
            queues={"q": 4},
            migrate=False,
            meter_provider=telemetry.meter_provider,
        ) as engine:
            await engine.enqueue_many("q", [Work(mode="hang") for _ in range(2)])
            while engine.statistics().queues[0].running < 2:
                await trio.sleep(0.02)
            points = telemetry.points(names.WORKER_UTILIZATION.name)
    assert [(p.attributes["queue"], p.value) for p in points] == [("q", 0.5)]


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _tomorrow() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


async def test_every_lifecycle_event_is_logged_with_its_fields(
    database_url: str, telemetry: Telemetry, db: Db
) -> None:
    """enqueued, claimed, completed, failed_retry, failed_terminal, cancelled, recovered,
    released and the engine's own events, each with task_id, queue, kind, attempt and
    worker_id where they apply."""
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with _open(database_url, telemetry, shutdown_timeout=0.2) as engine:
            ok = await engine.enqueue("q", Work())
            flaky = await engine.enqueue("q", Work(fail_until=2), max_attempts=2)
            fatal = await engine.enqueue("q", Work(mode="fatal"))
            await _until_final(engine, ok.id, flaky.id, fatal.id)
            later = await engine.enqueue("q", Work(), scheduled_at=_tomorrow())
            await engine.cancel(later.id)
            orphan = await engine.enqueue("q", Work(), scheduled_at=_tomorrow())
            await db.execute(
                "UPDATE iron_defer.tasks SET status = 'running', attempts = 1, "
                "claimed_by = gen_random_uuid(), claimed_until = now() - interval '1 s', "
                "started_at = now() WHERE id = $1",
                orphan.id,
            )
            while not any(e["event"] == "task_recovered" for e in logs):
                await trio.sleep(0.02)
            hung = await engine.enqueue("q", Work(mode="hang"))
            while not any(
                e["event"] == "task_claimed" and e["task_id"] == str(hung.id) for e in logs
            ):
                await trio.sleep(0.02)
    by_event: dict[str, list[Any]] = {}
    for event in logs:
        by_event.setdefault(event["event"], []).append(event)
    common = {"task_id", "queue", "kind", "attempt", "worker_id"}
    for name in ("task_claimed", "task_completed", "task_failed_retry", "task_failed_terminal"):
        assert by_event[name], name
        assert common <= set(by_event[name][0]), name
    assert {"task_id", "queue", "kind", "worker_id"} <= set(by_event["task_enqueued"][0])
    assert "duration_ms" in by_event["task_completed"][0]
    retry = by_event["task_failed_retry"][0]
    assert retry["error"] == "RuntimeError: attempt 1 failed"
    assert (
        retry["next_run_at"] > retry["timestamp"] if "timestamp" in retry else retry["next_run_at"]
    )
    assert by_event["task_failed_terminal"][0]["error"] == "declined"
    assert by_event["task_cancelled"][0]["task_id"] == str(later.id)
    assert by_event["task_recovered"][0]["task_id"] == str(orphan.id)
    assert any(e["task_id"] == str(hung.id) for e in by_event["task_released"])
    for name in ("engine_started", "engine_draining", "engine_stopped"):
        assert by_event[name], name
    assert Counter(e["event"] for e in logs)["engine_started"] == 1


async def test_payloads_and_passwords_never_reach_the_logs(
    database_url: str, telemetry: Telemetry
) -> None:
    """With default settings, the JSON log of a run with failures and a DSN that carries a
    password contains neither the payload nor the password."""
    url = database_url.replace("postgres@", "postgres:hunter2pass@")
    out = StringIO()
    previous = structlog.get_config()
    configure_json_logging("debug", stream=out)
    try:
        settings = fast_settings(url)
        with trio.fail_after(30):
            async with iron_defer.open_engine(
                settings, tasks=[Work], migrate=False, meter_provider=telemetry.meter_provider
            ) as engine:
                record = await engine.enqueue(Work(fail_until=2), max_attempts=2)
                await _until_final(engine, record.id)
                structlog.get_logger("test").error(
                    "connection_report", dsn=url, text=f"failed to reach {url}"
                )
    finally:
        structlog.configure(**previous)
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(line["event"] == "task_failed_retry" for line in lines)
    assert SECRET not in text
    assert "hunter2pass" not in text
    assert ":***@" in text  # the masked DSN of the explicit report


async def test_payloads_are_logged_when_configured(database_url: str, telemetry: Telemetry) -> None:
    """observability.log_payload adds the payload to enqueued and claimed events."""
    settings = fast_settings(database_url).model_copy(
        update={
            "observability": iron_defer.Settings.build(
                observability={"log_payload": True}
            ).observability
        }
    )
    with trio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with iron_defer.open_engine(settings, tasks=[Work], migrate=False) as engine:
            record = await engine.enqueue(Work())
            await _until_final(engine, record.id)
    payloads = [e.get("payload") for e in logs if e["event"] in {"task_enqueued", "task_claimed"}]
    assert payloads == [{"mode": "ok", "fail_until": 0, "secret": SECRET}] * 2


async def test_attempts_are_spans_of_the_enqueuing_trace(
    database_url: str, telemetry: Telemetry
) -> None:
    """A task failing twice then succeeding gives three execute spans in one trace, children
    of the enqueue span, which continues the caller's own span."""
    tracer = telemetry.tracer_provider.get_tracer("test")
    with trio.fail_after(30):
        async with _open(database_url, telemetry) as engine:
            with tracer.start_as_current_span("http_request") as request_span:
                record = await engine.enqueue("q", Work(fail_until=3), max_attempts=3)
            await _until_final(engine, record.id)
    spans = telemetry.exporter.get_finished_spans()
    executes = sorted(
        (s for s in spans if s.name == "iron_defer.execute"),
        key=lambda s: int(_attrs(s)["iron_defer.attempt"]),
    )
    (enqueue,) = [s for s in spans if s.name == "iron_defer.enqueue"]
    trace_id = request_span.get_span_context().trace_id
    assert len(executes) == 3
    assert {s.context.trace_id for s in [*executes, enqueue]} == {trace_id}
    assert all(
        s.parent is not None and s.parent.span_id == enqueue.context.span_id for s in executes
    )
    assert enqueue.kind is SpanKind.PRODUCER
    assert [s.kind for s in executes] == [SpanKind.CONSUMER] * 3
    assert [_attrs(s)["iron_defer.attempt"] for s in executes] == [1, 2, 3]
    assert [_attrs(s)["iron_defer.outcome"] for s in executes] == ["retry", "retry", "completed"]
    assert _attrs(executes[0])["iron_defer.task_id"] == str(record.id)
    assert executes[0].status.status_code.name == "ERROR"
    assert executes[2].status.status_code.name == "UNSET"
    assert record.traceparent is not None
    assert f"{trace_id:032x}" in record.traceparent


async def test_no_tracing_configured_stores_no_trace_context(database_url: str) -> None:
    """Without a tracer provider nothing is traced, and tasks carry no traceparent."""
    with trio.fail_after(15):
        async with iron_defer.open_engine(
            fast_settings(database_url), tasks=[Work], migrate=False, run_workers=False
        ) as engine:
            record = await engine.enqueue(Work())
    assert record.traceparent is None


async def test_without_a_tracing_sdk_tasks_still_carry_the_callers_trace_context(
    database_url: str,
) -> None:
    """A request's propagated trace context (no SDK in this process) is stored with the task,
    so a downstream process that does trace continues the caller's trace."""
    from opentelemetry import context as otel_context

    from iron_defer_trio.observability import tracing

    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with trio.fail_after(15):
        async with iron_defer.open_engine(
            fast_settings(database_url), tasks=[Work], migrate=False, run_workers=False
        ) as engine:
            token = otel_context.attach(tracing.context_from_headers({"traceparent": incoming}))
            try:
                record = await engine.enqueue(Work())
                [batch_record] = await engine.enqueue_many([Work()])
            finally:
                otel_context.detach(token)
            stored = await engine.get(record.id)
    assert record.traceparent == incoming
    assert batch_record.traceparent == incoming
    assert stored is not None
    assert stored.traceparent == incoming


def _run_program(source: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a separate Python program (its own global OpenTelemetry and logging
    state) against the test's database; it must exit 0."""
    result = subprocess.run(
        [sys.executable, "-c", source],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


_PROVIDER_LATER = """
import os
from typing import ClassVar
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import iron_defer_trio as iron_defer

class Hello(iron_defer.Task):
    KIND: ClassVar[str] = "hello"
    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        pass

async def main() -> None:
    async with iron_defer.open_engine(os.environ["DATABASE_URL"], tasks=[Hello]) as engine:
        await engine.enqueue(Hello())
        await engine.wait_until_idle()
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        await engine.enqueue(Hello())
        await engine.wait_until_idle()
    print(sorted(span.name for span in exporter.get_finished_spans()))

trio.run(main)
"""


def test_a_tracer_provider_installed_after_the_engine_opened_gets_its_spans(
    database_url: str,
) -> None:
    """The engine skips span work while no global provider exists, but asks again at each
    call: a provider the application installs later receives the next task's spans."""
    result = _run_program(_PROVIDER_LATER, database_url)
    assert result.stdout.strip().splitlines()[-1] == str(
        ["iron_defer.enqueue", "iron_defer.execute"]
    )


async def test_engines_and_the_server_telemetry_leave_global_providers_alone(
    database_url: str,
) -> None:
    """Neither an engine nor serve's telemetry replaces the application's global
    OpenTelemetry providers."""
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace

    from iron_defer_trio.observability.telemetry import build_telemetry

    meter_before = otel_metrics.get_meter_provider()
    tracer_before = trace.get_tracer_provider()
    telemetry = build_telemetry(iron_defer.Settings().observability)
    with trio.fail_after(15):
        async with iron_defer.open_engine(
            fast_settings(database_url),
            tasks=[Work],
            migrate=False,
            meter_provider=telemetry.meter_provider,
            tracer_provider=telemetry.tracer_provider,
        ) as engine:
            await engine.enqueue(Work())
            await engine.wait_until_idle()
    telemetry.shutdown()
    assert otel_metrics.get_meter_provider() is meter_before
    assert trace.get_tracer_provider() is tracer_before


_UNCONFIGURED = """
import os, sys
from typing import ClassVar
import trio
import iron_defer_trio as iron_defer

class Hello(iron_defer.Task):
    KIND: ClassVar[str] = "hello"
    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        ctx.log.info("said_hello")

async def main() -> None:
    async with iron_defer.open_engine(os.environ["DATABASE_URL"], tasks=[Hello]) as engine:
        await engine.enqueue(Hello())
        await engine.wait_until_idle()

trio.run(main)
"""


def test_an_application_that_never_configured_logging_sees_info_not_per_task_debug(
    database_url: str,
) -> None:
    """structlog's own defaults print every level; the engine's logger stops at info then,
    so an embedding program is not flooded with a debug line per task."""
    result = _run_program(_UNCONFIGURED, database_url)
    assert "engine_started" in result.stdout
    assert "said_hello" in result.stdout
    for debug_event in ("task_enqueued", "task_claimed", "task_completed"):
        assert debug_event not in result.stdout
