"""Run the real ``iron-defer-trio serve`` as a subprocess and talk to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from email.message import Message

CLI = Path(sys.executable).parent / "iron-defer-trio"

#: Task classes the e2e servers run (written into a temp dir, imported with --app).
TASKS_MODULE = """
import gc
from typing import ClassVar

import trio

import iron_defer_trio as iron_defer


class Echo(iron_defer.Task):
    KIND: ClassVar[str] = "echo"
    message: str

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        ctx.log.info("echo", message=self.message)


class GcState(iron_defer.Task):
    KIND: ClassVar[str] = "gc_state"

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        ctx.log.info("gc_state", threshold=gc.get_threshold(), frozen=gc.get_freeze_count())


class FailOnce(iron_defer.Task):
    KIND: ClassVar[str] = "fail_once"
    RETRY: ClassVar[iron_defer.RetryPolicy | None] = iron_defer.RetryPolicy(
        base_delay=0.1, max_delay=0.1
    )

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")


class Sleep(iron_defer.Task):
    KIND: ClassVar[str] = "sleep"
    seconds: float

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await trio.sleep(self.seconds)


# Checkpoints, suspends until a signal, checkpoints the answer, then holds its slot for
# `hold` seconds (long enough to be cancelled while running).
class Durable(iron_defer.Task):
    KIND: ClassVar[str] = "durable"
    hold: float = 0.0

    async def execute(self, ctx: iron_defer.TaskContext) -> None:
        await ctx.checkpoint({"step": "asked"})
        if ctx.signal_payload is None:
            await ctx.suspend()
        await ctx.checkpoint({"step": "approved", "by": ctx.signal_payload})
        await trio.sleep(self.hold)
"""


def write_tasks_module(directory: Path) -> Path:
    """Put ``e2e_tasks.py`` in ``directory`` and return the directory."""
    (directory / "e2e_tasks.py").write_text(TASKS_MODULE)
    return directory


@dataclass
class Response:
    status: int
    #: Case-insensitive, as HTTP header names are.
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A running ``serve`` process."""

    process: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)
    token: str | None = None
    _reader: threading.Thread | None = None

    def events(self, name: str) -> list[dict[str, Any]]:
        """Parsed JSON log lines whose event is ``name``."""
        found = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
        return found

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        authenticate: bool = True,
    ) -> Response:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token and authenticate:
            all_headers["Authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return Response(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, error.headers, error.read())

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._close_output()
        return code

    def _close_output(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.stdout.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_output()


def start_server(
    *args: str,
    cwd: Path,
    env: dict[str, str],
    token: str | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start ``serve --port 0 ...`` and wait until it listens (its server_started event)."""
    process = subprocess.Popen(
        [str(CLI), "serve", "--port", "0", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(process, token=token)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line.rstrip("\n"))
            if not ready.is_set() and '"server_started"' in line:
                server.url = json.loads(line)["urls"][0]
                ready.set()
        ready.set()

    server._reader = threading.Thread(target=read, daemon=True)
    server._reader.start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError("serve did not start:\n" + "\n".join(server.lines))
    if not server.url:
        server.stop()
        raise AssertionError("serve exited before listening:\n" + "\n".join(server.lines))
    return server


def base_env(**extra: str) -> dict[str, str]:
    """The test environment without settings that would leak in from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("IRON_DEFER") and k not in {"DATABASE_URL", "PORT"}
    }
    env.update(extra)
    return env


def wait_for(check: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
