"""The throughput chart: bar geometry for a small inline SVG, computed server-side so the
page needs no charting library."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH = 180
HEIGHT = 36


@dataclass(frozen=True)
class Bar:
    """One bucket's bar, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    count: int


def bars(counts: tuple[int, ...]) -> list[Bar]:
    """Bars for ``counts`` (oldest first), scaled so the tallest fills the chart."""
    if not counts:
        return []
    peak = max(counts) or 1
    step = WIDTH / len(counts)
    result = []
    for index, count in enumerate(counts):
        # Non-zero buckets get at least one unit, so a single completion stays visible.
        height = 0.0 if count == 0 else max(1.0, HEIGHT * count / peak)
        result.append(
            Bar(
                x=round(index * step, 2),
                y=round(HEIGHT - height, 2),
                width=round(max(step - 1, 1), 2),
                height=round(height, 2),
                count=count,
            )
        )
    return result
