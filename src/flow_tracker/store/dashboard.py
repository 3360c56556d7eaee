"""Whole reads for the dashboard's statistics: each one connection, each one call.

The pages (:mod:`flow_tracker.web.statistics`,
:mod:`flow_tracker.web.workflow_statistics`, the statistics keeper) ask for what
they show and never open a connection or pass a SQL condition themselves: the
rollups' pieces (:mod:`flow_tracker.store.rollups`) and the one meaning of
"stale" and "silent" (:mod:`flow_tracker.store.jobs`) are put together here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from flow_tracker.status import UNFINISHED_STATUSES
from flow_tracker.store import jobs, queries, rollups
from flow_tracker.store.engine import Store


def watermark(store: Store) -> datetime | None:
    """The end of the last hour rolled up, or None before the first refresh."""
    with store.engine.connect() as conn:
        return rollups.read_watermark(conn)


def warm(store: Store, spans: Iterable[tuple[rollups.Span, int]]) -> None:
    """Sum the rolled-up part of each ``(span, bar_seconds)`` ahead of the readers."""
    with store.engine.connect() as conn:
        for span, bar_seconds in spans:
            rollups.warm(conn, store, span, bar_seconds)


@dataclass(frozen=True)
class OverviewParts:
    """What the overview page reads from the database for one window."""

    counts: list[rollups.CountRow]
    histograms: rollups.Histograms
    series: list[rollups.SeriesRow]
    unfinished: dict[str, int]
    """Processes per unfinished status, counted live."""
    stale_queued: int
    silent_running: int


def overview_parts(
    store: Store,
    span: rollups.Span,
    bar_seconds: int,
    now: datetime,
    *,
    stale_after: float,
    lost_after: float,
) -> OverviewParts:
    """The overview's counts, histograms and bars over ``span``, and what is unfinished now.

    Stale and silent are the same definitions as :func:`flow_tracker.health` and
    the health page use (:mod:`flow_tracker.store.jobs`).
    """
    with store.engine.connect() as conn:
        counts, histograms = rollups.read_counts_and_histograms(conn, store, span)
        return OverviewParts(
            counts=counts,
            histograms=histograms,
            series=rollups.read_series(conn, store, span, bar_seconds),
            unfinished=queries.count_by_status(conn, UNFINISHED_STATUSES),
            stale_queued=jobs.count(conn, jobs.stale_queued(now, stale_after)),
            silent_running=jobs.count(conn, jobs.silent(now, lost_after)),
        )


def category_parts(
    store: Store, span: rollups.Span, category: str
) -> tuple[rollups.NameTotals, rollups.Histograms]:
    """The finished processes of ``category`` per name over ``span``, with their histograms."""
    with store.engine.connect() as conn:
        totals = rollups.count_totals(conn, store, span, category=category)
        names = set(totals.finished)
        histograms = rollups.read_histograms(conn, store, span, names=names.__contains__)
    return totals, histograms
