"""The dashboard's throughput bars: scaled to the busiest bucket, zero buckets drawn empty,
and a single completion still visible."""

from __future__ import annotations

from iron_defer_trio.http.ui import _chart


def test_the_busiest_bucket_fills_the_chart_and_others_scale_to_it() -> None:
    bars = _chart.bars((0, 5, 10))
    assert [bar.height for bar in bars] == [0.0, _chart.HEIGHT / 2, _chart.HEIGHT]
    assert [bar.y + bar.height for bar in bars] == [_chart.HEIGHT] * 3
    assert bars[-1].x + bars[-1].width <= _chart.WIDTH


def test_one_completion_next_to_many_stays_visible() -> None:
    bars = _chart.bars((1, 10_000))
    assert bars[0].height == 1.0 and bars[0].count == 1


def test_no_buckets_and_all_zero_buckets_draw_nothing() -> None:
    assert _chart.bars(()) == []
    assert all(bar.height == 0 for bar in _chart.bars((0, 0, 0)))
