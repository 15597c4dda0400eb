"""The benchmark command of docs/benchmarks.md works from a clean checkout: run at tiny sizes
(``--smoke``), it measures both systems and writes its table and JSON. Speed is never asserted
here (that is what the benchmark itself reports); only that every measurement ran."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import pg

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m benchmarks.<module>`` on a database of its own (dropped afterwards),
    writing into ``out``; fail with its stderr if it fails."""
    database = pg.unique_name(f"iron_defer_bench_{module}_smoke")
    command = [sys.executable, "-m", f"benchmarks.{module}", *options]
    command += ["--dsn", pg.ADMIN_DSN, "--database", database, "--out", str(out)]
    try:
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        pg.run_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_benchmark_command_runs_and_writes_its_results(tmp_path: Path) -> None:
    result = _run("run", tmp_path, "--smoke", "--no-plots")
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["drain"]) == {"500@10", "500@50", "500@200"}
    for pair in results["drain"].values():
        for side in ("iron", "raw"):
            assert pair[side]["rate"] > 0
            assert pair[side]["peak_rss_mib"] > 0
    for side in ("iron", "raw"):
        assert results["enqueue"][side]["single"] > 0 and results["enqueue"][side]["bulk"] > 0
        assert len(results["latency_ms"][side]["samples"][0]) == 20
    assert results["claim_ms_with_pending"]["pending"] == 2_000
    assert results["history"]["ratio"] > 0
    table = (tmp_path / "table.md").read_text()
    assert "| drain 500 at concurrency 50 (tasks/s) |" in table
    assert table in result.stdout


def test_submission_benchmark_runs_and_reports_every_variant(tmp_path: Path) -> None:
    _run("submission", tmp_path, "--rounds", "1", "--single", "20", "--bulk", "600")
    results = json.loads((tmp_path / "submission.json").read_text())
    assert set(results["median"]) == {"plain", "key", "audit", "key+audit"}
    assert all(v["single"] > 0 and v["bulk"] > 0 for v in results["median"].values())
    assert "| key+audit |" in (tmp_path / "submission.md").read_text()


def test_checkpoint_benchmark_runs_and_reports_every_size(tmp_path: Path) -> None:
    _run("checkpoint", tmp_path, "--samples", "4")
    results = json.loads((tmp_path / "checkpoint.json").read_text())
    assert list(results) == ["1 KiB", "64 KiB", "1 MiB"]
    assert all(stats["p99"] > 0 for stats in results.values())


def test_cancel_benchmark_runs_and_reports_both_delays(tmp_path: Path) -> None:
    _run("cancel", tmp_path, "--samples", "3")
    results = json.loads((tmp_path / "cancel.json").read_text())
    assert results["samples"] == 3
    seen, final = results["handler_sees_cancelled_ms"], results["task_cancelled_ms"]
    assert 0 < seen["p50"] <= seen["max"] < 5000
    assert 0 < final["p50"] <= final["max"] < 5000
    assert "trio.Cancelled" in (tmp_path / "cancel.md").read_text()


def test_retention_benchmark_runs_and_reports_every_table_state(tmp_path: Path) -> None:
    _run("retention", tmp_path, "--finished", "2000", "--tasks", "200", "--repeat", "1")
    results = json.loads((tmp_path / "retention.json").read_text())
    assert results["retention"]["deleted"] == 2000 + 200  # the history and its drain
    for state in ("empty", "history", "after_retention"):
        assert results[state]["rate"] > 0
        assert results[state]["claim_ms"]["p50"] > 0
    assert results["history"]["ratio"] > 0 and results["after_retention"]["ratio"] > 0
    assert "| after retention deleted them |" in (tmp_path / "retention.md").read_text()
