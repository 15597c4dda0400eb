"""``serve`` on a machine with no database configured: it starts its own PostgreSQL, works,
and takes it down again on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from iron_defer_trio.store import default_data_dir
from tests.docs.test_readme import main_job_arguments
from tests.e2e.serving import base_env, start_server, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _postgres_processes(data_dir: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-af", f"postgres.*{data_dir}"], capture_output=True, text=True, check=False
    )
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture
def empty_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_readme_serve_command_works_without_a_database_url(empty_home: Path) -> None:
    """The README's main command, with no DATABASE_URL and an empty HOME: ready within 30 s,
    runs a task, and after SIGTERM no PostgreSQL process of its data directory is left
    (unless another user was already running it)."""
    env = base_env(HOME=str(empty_home))
    env.pop("XDG_DATA_HOME", None)
    data_dir = default_data_dir(env)
    already_running = bool(_postgres_processes(data_dir))
    arguments = main_job_arguments()
    assert arguments[0] == "serve"
    started = time.monotonic()
    server = start_server(*arguments[1:], cwd=ROOT, env=env, timeout=60)
    try:
        wait_for(lambda: server.request("GET", "/health/ready").status == 200, timeout=30)
        ready_after = time.monotonic() - started
        announced = server.events("embedded_database")
        assert announced
        assert announced[0]["dsn"].startswith("postgresql://")
        assert announced[0]["data_dir"] == str(data_dir)
        task = server.request(
            "POST", "/tasks", {"kind": "send_email", "payload": {"to": "a@b.c", "subject": "hi"}}
        ).json()
        wait_for(
            lambda: server.request("GET", f"/tasks/{task['id']}").json()["status"] == "completed"
        )
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        server.stop()
    assert ready_after < 30.0, ready_after
    if not already_running:
        wait_for(lambda: not _postgres_processes(data_dir), timeout=10)
    print(f"zero-setup serve ready {ready_after:.2f} s after start (data in {data_dir})")


def test_default_data_dir_follows_home_when_not_root(empty_home: Path) -> None:
    """A non-root user's cluster lives under their own data directory."""
    env = {"HOME": str(empty_home)}
    assert default_data_dir(env, euid=1000) == empty_home / ".local/share/iron-defer-trio/postgres"
    assert default_data_dir(env, euid=0) == Path("/var/lib/iron-defer-trio/postgres")
    assert os.geteuid() == 0 or default_data_dir(env).is_relative_to(empty_home)
