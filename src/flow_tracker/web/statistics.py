"""What ran, what failed and how long it took: the numbers behind the dashboard's overview.

Finished processes and flows are read from the rollups (see
:mod:`flow_tracker.store.rollups`), so every window costs about the same at a
thousand rows or at millions; what is unfinished right now is counted live.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flow_tracker.records import ProcessRecord
from flow_tracker.status import Status
from flow_tracker.store import dashboard, queries, rollups
from flow_tracker.store.engine import Store, is_read_only
from flow_tracker.store.histogram import percentile

logger = logging.getLogger("flow_tracker")

#: Windows the overview offers, and the width of one bar of its throughput chart.
WINDOWS: dict[str, tuple[timedelta, int]] = {
    "1h": (timedelta(hours=1), 300),
    "24h": (timedelta(hours=24), 3_600),
    "7d": (timedelta(days=7), 6 * 3_600),
    "30d": (timedelta(days=30), 86_400),
}
DEFAULT_WINDOW = "24h"
TOP_NAMES = 10
RECENT_FAILURES = 8


@dataclass(frozen=True)
class NameStats:
    """Finished runs of one process or flow name within the window."""

    name: str
    count: int
    failed: int
    p50_ms: float | None
    p95_ms: float | None
    avg_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "count": self.count,
            "failed": self.failed,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "avg_ms": self.avg_ms,
        }


@dataclass(frozen=True)
class Bar:
    """One bar of the throughput chart: processes that finished in [start, start + width)."""

    start: datetime
    completed: int = 0
    failed: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        """Every process finished in this bar."""
        return self.completed + self.failed + self.other


@dataclass(frozen=True)
class Overview:
    """Everything the overview page shows for one window."""

    window: str
    start: datetime
    end: datetime
    bar_seconds: int
    finished: dict[str, int]
    by_category: dict[str, dict[str, int]]
    unfinished: dict[str, int]
    stale_queued: int
    silent_running: int
    bars: list[Bar]
    slow_processes: list[NameStats]
    slow_flows: list[NameStats]
    recent_failures: list[ProcessRecord] = field(default_factory=list)

    @property
    def finished_total(self) -> int:
        """Processes that finished within the window."""
        return sum(self.finished.values())

    @property
    def failure_rate(self) -> float | None:
        """Failed / (completed + failed) within the window; None when nothing finished."""
        failed = self.finished.get("failed", 0)
        done = failed + self.finished.get("completed", 0)
        return failed / done if done else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the API's ``/api/stats``)."""
        return {
            "window": self.window,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "finished": self.finished,
            "finished_total": self.finished_total,
            "failure_rate": self.failure_rate,
            "by_category": self.by_category,
            "unfinished": self.unfinished,
            "stale_queued": self.stale_queued,
            "silent_running": self.silent_running,
            "throughput": {
                "bar_seconds": self.bar_seconds,
                "bars": [
                    {
                        "start": b.start.isoformat(),
                        "completed": b.completed,
                        "failed": b.failed,
                        "other": b.other,
                    }
                    for b in self.bars
                ],
            },
            "slowest_processes": [s.to_dict() for s in self.slow_processes],
            "slowest_flows": [s.to_dict() for s in self.slow_flows],
            "recent_failures": [
                {
                    "id": str(p.id),
                    "name": p.name,
                    "finished_at": p.finished_at.isoformat() if p.finished_at else None,
                    "error": p.error.to_dict() if p.error else None,
                }
                for p in self.recent_failures
            ],
        }


def _name_stats(
    counts: list[rollups.CountRow], histograms: rollups.Histograms, kind: str
) -> list[NameStats]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for row in counts:
        if row.kind != kind:
            continue
        entry = totals[row.name]
        entry[0] += row.count
        entry[2] += row.duration_ms_sum
        if row.status == Status.FAILED.value:
            entry[1] += row.count
    hist = {name: buckets for (k, name), buckets in histograms.items() if k == kind}
    stats = [
        NameStats(
            name=name,
            count=int(count),
            failed=int(failed),
            p50_ms=percentile(hist.get(name, {}), 0.50),
            p95_ms=percentile(hist.get(name, {}), 0.95),
            avg_ms=(total / count) if count else None,
        )
        for name, (count, failed, total) in totals.items()
    ]
    stats.sort(key=lambda s: (s.p95_ms or 0.0, s.count), reverse=True)
    return stats[:TOP_NAMES]


def _bars(rows: list[rollups.SeriesRow], span: rollups.Span, bar_seconds: int) -> list[Bar]:
    first = int(span.start.timestamp()) // bar_seconds
    last = int((span.end.timestamp() - 1e-6) // bar_seconds)
    tallies: dict[int, list[int]] = {i: [0, 0, 0] for i in range(first, last + 1)}
    for row in rows:
        index = int(row.start.timestamp()) // bar_seconds
        slot = tallies.get(index)
        if slot is None:  # rounded-down start hour of a long window: fold into the first bar
            slot = tallies[first] if index < first else tallies[last]
        position = {"completed": 0, "failed": 1}.get(row.status, 2)
        slot[position] += row.count
    return [
        Bar(
            datetime.fromtimestamp(i * bar_seconds, span.start.tzinfo),
            completed=c,
            failed=f,
            other=o,
        )
        for i, (c, f, o) in sorted(tallies.items())
    ]


def refresh_rollups(store: Store, now: datetime) -> datetime | None:
    """Bring the rollups up to date; on failure log it and return the old watermark."""
    try:
        return rollups.refresh(store, now)
    except Exception as exc:  # a reader with no write access still gets an overview
        if is_read_only(exc):
            # A read replica: the rollups are kept on the primary (the reaper, or a
            # dashboard there), and reach this one by replication.
            logger.debug("flow-tracker: rollups not refreshed on a read-only server")
        else:
            logger.warning("flow-tracker: could not refresh the dashboard rollups", exc_info=True)
        return dashboard.watermark(store)


def window_span(
    window: str,
    now: datetime,
    watermark: datetime | None,
    version: str = "",
    rolled_from: datetime | None = None,
) -> rollups.Span:
    """The span the overview of ``window`` reads at ``now``, given the rollups' state."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    length, _bar_seconds = WINDOWS[window]
    start = now - length
    if length >= timedelta(days=2):
        # Windows of days are calendar days (UTC), today included: "7d" is today and
        # the six days before. They read one rollup row per day and name.
        start = rollups.floor_day(now) - (length - timedelta(days=1))
    return rollups.make_span(start, now, watermark, version, rolled_from)


def warm(store: Store, now: datetime, rollup_state: rollups.RollupVersion) -> None:
    """Sum the rolled-up part of every window as seen at ``now``, ahead of the readers."""
    dashboard.warm(
        store,
        (
            (window_span(window, now, *rollup_state), bar_seconds)
            for window, (_length, bar_seconds) in WINDOWS.items()
        ),
    )


def overview(
    store: Store,
    window: str = DEFAULT_WINDOW,
    *,
    stale_after: float = 900.0,
    lost_after: float = 60.0,
    rollup_state: rollups.RollupVersion | None = None,
) -> Overview:
    """The overview of the last ``window`` ("1h", "24h", "7d" or "30d").

    Args:
        store: the tracking database.
        window: one of :data:`WINDOWS`.
        stale_after: seconds after which a still-queued job counts as stale.
        lost_after: seconds without heartbeat after which a running process is called silent.
        rollup_state: the state of rollups kept fresh by someone else (see
            :class:`flow_tracker.web.statistics_keeper.StatisticsKeeper`); by default this
            call refreshes the rollups itself and reads their state.
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    _length, bar_seconds = WINDOWS[window]
    store.ensure_schema()
    now = queries.database_time(store)
    if rollup_state is None:
        refresh_rollups(store, now)
        rollup_state = rollups.stored_version(store)
    span = window_span(window, now, *rollup_state)
    parts = dashboard.overview_parts(
        store, span, bar_seconds, now, stale_after=stale_after, lost_after=lost_after
    )
    counts, histograms = parts.counts, parts.histograms
    finished: dict[str, int] = defaultdict(int)
    by_category: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in counts:
        if row.kind == "p":
            finished[row.status] += row.count
            by_category[row.category][row.status] += row.count
    failures = queries.list_processes(
        store, status=Status.FAILED.value, since=span.start, limit=RECENT_FAILURES
    ).items
    return Overview(
        window=window,
        start=span.start,
        end=now,
        bar_seconds=bar_seconds,
        finished=dict(finished),
        by_category={k: dict(v) for k, v in sorted(by_category.items())},
        unfinished=parts.unfinished,
        stale_queued=parts.stale_queued,
        silent_running=parts.silent_running,
        bars=_bars(parts.series, span, bar_seconds),
        slow_processes=_name_stats(counts, histograms, "p"),
        slow_flows=_name_stats(counts, histograms, "f"),
        recent_failures=failures,
    )
