"""Geometry of the dashboard's charts, drawn by the templates as inline SVG.

No chart library and no inline style: bars are SVG rectangles whose position
and size are attributes (allowed by the Content-Security-Policy), computed here
in a fixed coordinate system that the SVG ``viewBox`` stretches to the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from flow_tracker.records import FlowRecord, ProcessRecord
from flow_tracker.web.statistics import Bar

CHART_HEIGHT = 100.0
BAR_SLOT = 10.0
WATERFALL_WIDTH = 1000.0
MAX_WATERFALL_ROWS = 400


@dataclass(frozen=True)
class BarShape:
    """One stacked bar: failed on top of other on top of completed."""

    x: float
    width: float
    segments: list[tuple[str, float, float]]  # (css class, y, height)
    title: str


@dataclass(frozen=True)
class ThroughputChart:
    """The throughput chart: bars, the value of the top line and the time labels."""

    width: float
    height: float
    bars: list[BarShape]
    peak: int
    labels: list[tuple[float, datetime]]  # (x in percent, time)


def throughput(bars: list[Bar], bar_seconds: int) -> ThroughputChart:
    """Stacked bars of completed / failed / other processes per time bucket."""
    peak = max((b.total for b in bars), default=0)
    scale = (CHART_HEIGHT - 2) / peak if peak else 0.0
    shapes: list[BarShape] = []
    for i, bar in enumerate(bars):
        y = CHART_HEIGHT
        segments: list[tuple[str, float, float]] = []
        for css, value in (("ok", bar.completed), ("other", bar.other), ("bad", bar.failed)):
            if value:
                height = max(value * scale, 0.8)
                y -= height
                segments.append((css, y, height))
        title = (
            f"{bar.start:%Y-%m-%d %H:%M} UTC: {bar.completed} completed, "
            f"{bar.failed} failed, {bar.other} other"
        )
        shapes.append(BarShape(i * BAR_SLOT + 1, BAR_SLOT - 2, segments, title))
    labels: list[tuple[float, datetime]] = []
    if bars:
        step = max(1, len(bars) // 6)
        for i in range(0, len(bars), step):
            labels.append((100.0 * i / len(bars), bars[i].start))
    return ThroughputChart(len(bars) * BAR_SLOT, CHART_HEIGHT, shapes, peak, labels)


@dataclass(frozen=True)
class WaterfallRow:
    """One flow of the timeline: where its bar starts and how long it is, in 0..1000."""

    flow: FlowRecord
    depth: int
    x: float
    width: float
    running: bool


@dataclass(frozen=True)
class Waterfall:
    """The timeline of a process: one row per flow, in tree order."""

    rows: list[WaterfallRow]
    total_ms: float
    hidden: int
    ticks: list[tuple[float, float]]  # (x in percent, ms since the start)


def _walk(flows: list[FlowRecord], depth: int = 0) -> Iterator[tuple[FlowRecord, int]]:
    for flow in flows:
        yield flow, depth
        yield from _walk(flow.children, depth + 1)


def waterfall(process: ProcessRecord, now: datetime) -> Waterfall:
    """Lay out every flow of ``process`` against the process's own start and end."""
    every = list(_walk(process.flows))
    origin = process.started_at or process.created_at
    if every:
        origin = min(origin, *(f.started_at for f, _ in every))
    ends = [f.finished_at or now for f, _ in every]
    end = process.finished_at or now
    if ends:
        end = max(end, *ends)
    total_ms = max((end - origin).total_seconds() * 1000, 0.001)
    rows: list[WaterfallRow] = []
    for flow, depth in every[:MAX_WATERFALL_ROWS]:
        start_ms = (flow.started_at - origin).total_seconds() * 1000
        stop = flow.finished_at or now
        length_ms = max((stop - flow.started_at).total_seconds() * 1000, 0.0)
        x = WATERFALL_WIDTH * start_ms / total_ms
        width = max(WATERFALL_WIDTH * length_ms / total_ms, 1.5)
        rows.append(
            WaterfallRow(
                flow, depth, min(x, WATERFALL_WIDTH - 1.5), width, flow.finished_at is None
            )
        )
    ticks = [(100.0 * i / 4, total_ms * i / 4) for i in range(5)]
    return Waterfall(rows, total_ms, max(0, len(every) - MAX_WATERFALL_ROWS), ticks)
