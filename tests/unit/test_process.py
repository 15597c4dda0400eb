"""``tune_garbage_collector``: what it changes in the process that calls it, and that a worker
can call it without loading the HTTP stack."""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = """
import gc, json, sys
import iron_defer_trio
before = (gc.get_threshold(), gc.get_freeze_count())
iron_defer_trio.tune_garbage_collector()
print(json.dumps({
    "before": before,
    "threshold": gc.get_threshold(),
    "frozen": gc.get_freeze_count(),
    "http_stack_loaded": "hypercorn" in sys.modules or "quart" in sys.modules,
}))
"""


def test_tuning_freezes_the_heap_and_raises_only_the_young_threshold() -> None:
    """In a fresh interpreter: start-up objects frozen, young generation every 10,000
    allocations, the older generations' thresholds as they were, and no HTTP modules loaded."""
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    (young, older, oldest), frozen_before = state["before"]
    assert frozen_before == 0
    assert state["threshold"] == [10_000, older, oldest]
    assert young != 10_000
    assert state["frozen"] > 1000
    assert state["http_stack_loaded"] is False
