"""Real worker processes for chaos scenarios: start, SIGKILL, restart, read their logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    worker_id: UUID | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None
    killed_at: float | None = None


class Fleet:
    """Worker processes running ``tests.chaos.worker`` against one tasks database."""

    def __init__(self, tasks_dsn: str, ledger_dsn: str, *options: str) -> None:
        self.tasks_dsn = tasks_dsn
        self.ledger_dsn = ledger_dsn
        self.options = options
        self.workers: list[WorkerProcess] = []

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.chaos.worker",
                self.tasks_dsn,
                self.ledger_dsn,
                *self.options,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        worker = WorkerProcess(process)

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                if line.startswith("ready "):
                    worker.worker_id = UUID(line.split()[1])
                    worker.ready.set()
                else:
                    worker.lines.append(line)
            worker.ready.set()

        worker.reader = threading.Thread(target=read, daemon=True)
        worker.reader.start()
        self.workers.append(worker)
        if not worker.ready.wait(timeout) or worker.worker_id is None:
            raise AssertionError("worker did not start:\n" + "\n".join(worker.lines[-20:]))
        return worker

    @property
    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process.poll() is None]

    def kill(self, worker: WorkerProcess) -> float:
        """SIGKILL a worker; return the wall-clock time of the kill."""
        worker.process.send_signal(signal.SIGKILL)
        worker.killed_at = time.time()
        worker.process.wait(timeout=10)
        return worker.killed_at

    def events(self, name: str) -> list[dict[str, Any]]:
        """JSON log events called ``name`` from every worker, past and present."""
        found = []
        for worker in self.workers:
            for line in list(worker.lines):
                if f'"{name}"' not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == name:
                    found.append(event)
        return found

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGKILL)
                worker.process.wait(timeout=10)
            if worker.reader is not None:
                worker.reader.join(timeout=5)
            if worker.process.stdout is not None:
                worker.process.stdout.close()


def wait_for(check: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
