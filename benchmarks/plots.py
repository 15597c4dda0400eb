"""PNG plots of a benchmark run: throughput against concurrency, and latency percentiles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # after the backend is chosen

if TYPE_CHECKING:
    from pathlib import Path


def draw(results: dict[str, Any], out: Path) -> None:
    """Write throughput.png and latency.png into ``out``."""
    _throughput(results, out / "throughput.png")
    _latency(results, out / "latency.png")


def _throughput(results: dict[str, Any], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.2))
    by_total: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, pair in results["drain"].items():
        total, concurrency = key.split("@")
        for system in ("iron", "raw"):
            by_total.setdefault(total, {}).setdefault(system, []).append(
                (int(concurrency), pair[system]["rate"])
            )
    styles = {"iron": ("iron-defer-trio", "-o"), "raw": ("raw asyncpg ceiling", "--s")}
    for total, systems in sorted(by_total.items()):
        for system, points in systems.items():
            points.sort()
            label, style = styles[system]
            axes.plot(
                [c for c, _ in points],
                [r for _, r in points],
                style,
                label=f"{label}, {int(total):,} tasks",
            )
    axes.set_xscale("log")
    axes.set_xticks([10, 50, 200], labels=["10", "50", "200"])
    axes.set_xlabel("concurrency (tasks running at once)")
    axes.set_ylabel("tasks completed per second")
    axes.set_title("Drain throughput of no-op tasks (median of runs)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _latency(results: dict[str, Any], path: Path) -> None:
    """Distribution (empirical CDF) of every enqueue-to-start sample of every run."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for system, label in (("iron", "iron-defer-trio"), ("raw", "raw asyncpg ceiling")):
        summary = results["latency_ms"][system]
        samples = sorted(value for run in summary["samples"] for value in run)
        fractions = [(i + 1) / len(samples) for i in range(len(samples))]
        axes.step(
            samples,
            fractions,
            where="post",
            label=f"{label}: p50 {summary['p50']:.1f} / p99 {summary['p99']:.1f} ms",
        )
    for quantile in (0.5, 0.95, 0.99):
        axes.axhline(quantile, color="grey", linewidth=0.6, alpha=0.5)
    axes.set_xscale("log")
    axes.set_xlabel("enqueue-to-start latency (ms, log scale)")
    axes.set_ylabel("fraction of tasks started")
    axes.set_title("Enqueue-to-start latency with idle workers (all runs)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
