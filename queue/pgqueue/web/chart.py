"""The throughput and latency chart: an inline SVG drawn on the server (no script, no CDN)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .reads import Minute

__all__ = ["Bar", "Chart", "chart"]

WIDTH, HEIGHT, MINUTES = 600, 120, 60


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    #: the mean run time per minute, as SVG polyline points
    latency_points: str
    bar_width: float
    peak: int
    peak_latency: float
    total_completed: int
    total_failed: int
    width: int = WIDTH
    height: int = HEIGHT


def chart(minutes: list[Minute], now: datetime) -> Chart:
    """One bar per minute of the last hour (completed stacked on failed) and a latency line."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES - 1)
    by_minute = {m.at.replace(second=0, microsecond=0): m for m in minutes}
    slot = WIDTH / MINUTES
    peak = max((m.completed + m.failed for m in minutes), default=0) or 1
    peak_latency = max((m.run_seconds or 0.0 for m in minutes), default=0.0) or 1.0
    bars, points = [], []
    for i in range(MINUTES):
        at = start + timedelta(minutes=i)
        m = by_minute.get(at)
        done, failed = (m.completed, m.failed) if m else (0, 0)
        done_h, failed_h = HEIGHT * done / peak, HEIGHT * failed / peak
        run = m.run_seconds if m and m.run_seconds is not None else None
        title = f"{at:%H:%M} — {done} completed, {failed} failed"
        if run is not None:
            title += f", mean run {run * 1000:.0f} ms"
            points.append(f"{i * slot + slot / 2:.1f},{HEIGHT - HEIGHT * run / peak_latency:.1f}")
        bars.append(Bar(i * slot, HEIGHT - done_h - failed_h, done_h, HEIGHT - failed_h, failed_h, title))
    return Chart(
        bars,
        " ".join(points),
        max(slot - 1, 1),
        peak if minutes else 0,
        peak_latency if minutes else 0.0,
        sum(m.completed for m in minutes),
        sum(m.failed for m in minutes),
    )
