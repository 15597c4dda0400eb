"""Every program under examples/ runs against a fresh database and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Lines each example must print (its own output, not the logs).
EXPECTED = {
    "basic_enqueue.py": ["sending 'Hi' to ada@example.com (attempt 1)", "is completed after 1"],
    "retry_and_backoff.py": [
        "flaky_upload: completed after 3 attempt(s)",
        "charge_card: failed after 1 attempt(s), last error: card 4242 declined",
        "poll_partner: failed after 3 attempt(s), last error: RuntimeError: partner API is down",
        "rate_limited: completed after 2 attempt(s)",
    ],
    "multi_queue.py": [
        "queue thumbnails: 80 completed, at most 8 at once (limit 8)",
        "queue emails: 20 completed, at most 2 at once (limit 2)",
    ],
}


#: Example modules that define tasks for the server rather than being programs.
TASK_MODULES = {"demo_tasks.py"}


def test_every_example_is_covered() -> None:
    """A new example needs an entry here, so it cannot escape the suite."""
    examples = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert sorted(examples - TASK_MODULES) == sorted(EXPECTED)
    assert examples >= TASK_MODULES


def test_demo_task_module_defines_the_documented_tasks() -> None:
    """The module the README serves registers its three kinds."""
    from iron_defer_trio._modules import load_task_classes

    kinds = sorted(cls.KIND for cls in load_task_classes(["examples.demo_tasks"]))
    assert kinds == ["flaky_webhook", "generate_report", "send_email"]


@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs(example: str, database_url: str) -> None:
    """The example exits 0 and prints its expected lines."""
    result = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "examples" / example)],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for line in EXPECTED[example]:
        assert line in result.stdout, f"{line!r} not in output:\n{result.stdout}"
