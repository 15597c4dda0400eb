"""``serve``'s telemetry: OTLP/HTTP push of metrics and traces to their own paths."""

from __future__ import annotations

import http.server
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import trio

import iron_defer_trio as iron_defer
from iron_defer_trio.config import Settings
from iron_defer_trio.observability.telemetry import build_telemetry
from tests.conftest import fast_settings

if TYPE_CHECKING:
    from collections.abc import Iterator


class Note(iron_defer.Task):
    KIND: ClassVar[str] = "note"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        return None


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, int]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        _Collector.received.append((self.path, self.headers.get("Content-Type", ""), length))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[str]:
    """A fake OTLP/HTTP collector on a free port (the exporters are synchronous clients)."""
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_metrics_and_traces_are_pushed_to_their_own_paths(
    database_url: str, collector: str
) -> None:
    """With observability.otlp_endpoint set, metrics reach /v1/metrics and traces
    /v1/traces as protobuf (not both to one URL, the original's bug)."""
    observability = Settings.build(
        observability={"otlp_endpoint": collector + "/", "otlp_interval": 1}
    ).observability
    telemetry = build_telemetry(observability)
    with trio.fail_after(30):
        async with iron_defer.open_engine(
            fast_settings(database_url),
            tasks=[Note],
            migrate=False,
            meter_provider=telemetry.meter_provider,
            tracer_provider=telemetry.tracer_provider,
        ) as engine:
            await engine.enqueue(Note())
            await engine.wait_until_idle()
        # flushing blocks on the exporters' HTTP calls: keep it off the event loop
        await trio.to_thread.run_sync(telemetry.shutdown)
    paths = {path for path, _, _ in _Collector.received}
    assert paths == {"/v1/metrics", "/v1/traces"}
    assert all(kind == "application/x-protobuf" for _, kind, _ in _Collector.received)
    assert all(size > 0 for _, _, size in _Collector.received)


def test_prometheus_rendering_uses_the_documented_names() -> None:
    """The server's registry renders metric names as documented: no doubled suffixes, no
    scope labels."""
    telemetry = build_telemetry(Settings().observability)
    from iron_defer_trio.observability.metrics import metrics_for

    metrics = metrics_for(telemetry.meter_provider)
    metrics.task_attempts.add(1, {"queue": "q", "kind": "k"})
    metrics.task_duration.record(0.2, {"queue": "q", "kind": "k", "outcome": "completed"})
    body, content_type = telemetry.render()
    text = body.decode()
    telemetry.shutdown()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'iron_defer_task_attempts_total{kind="k",queue="q"} 1.0' in text
    assert "_total_total" not in text
    assert "_seconds_seconds" not in text
    bucket = 'kind="k",le="0.25",outcome="completed",queue="q"'
    assert f"iron_defer_task_duration_seconds_bucket{{{bucket}}} 1.0" in text
    assert "otel_scope" not in text
