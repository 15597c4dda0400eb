"""The metrics and log-event reference pages match the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from iron_defer_trio.observability.metrics import ALL

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "reference"
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _events_in_code() -> dict[str, set[str]]:
    """event name -> levels, for every ``<logger>.<level>("event", ...)`` in the package."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "iron_defer_trio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LEVELS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and re.fullmatch(r"[a-z][a-z0-9_]*", node.args[0].value)
            ):
                found.setdefault(node.args[0].value, set()).add(node.func.attr)
    return found


def _rows(page: str, columns: int) -> list[list[str]]:
    rows = []
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == columns:
            rows.append(cells)
    return rows


def test_metrics_page_lists_every_metric_with_its_type_and_labels() -> None:
    """One row per metric the code defines, with the same type and labels."""
    documented = {
        row[0].strip("`"): (row[1], tuple(re.findall(r"`([a-z_]+)`", row[2])))
        for row in _rows("metrics.md", 4)
    }
    assert documented == {spec.name: (spec.kind, spec.labels) for spec in ALL}


def test_log_events_page_lists_every_event_the_code_emits_at_its_level() -> None:
    """One row per event name the package logs, with the level it is logged at."""
    documented = {row[0].strip("`"): row[1] for row in _rows("log-events.md", 4)}
    in_code = _events_in_code()
    assert sorted(documented) == sorted(in_code)
    for event, levels in in_code.items():
        assert levels == {documented[event]}, event


def test_event_scanner_finds_known_events() -> None:
    """The scan itself works (a regression would make the page test vacuous)."""
    events = _events_in_code()
    assert {"task_completed", "engine_started", "pool_saturated"} <= set(events)
