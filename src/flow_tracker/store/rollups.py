"""Hourly and daily rollups of finished processes and flows, for the dashboard's statistics.

The overview answers "how many, how fast, how often failed" over up to 30 days.
Computed from raw rows that means aggregating millions of rows per page view
(a p95 by name over 7 days of 1 M processes takes ~140 ms on PostgreSQL), so
finished processes and flows are counted per hour of their finish time, with a
log-scale duration histogram (:mod:`flow_tracker.store.histogram`), and hours
are summed into days. A window then reads day rows, hour rows at its edges and
the raw rows of the last hour (the "tail") that is not rolled up yet.

Nothing in the write path changes: :func:`refresh` rolls up closed hours when a
reader asks, and rolls the last ``RECHECK`` hours again each time, so rows that
the background writer stores a little late are still counted. Rows that arrive
later than that (after a long database outage, a restore or an import) are in
the lists, not in the charts, until :func:`rebuild` (``flow-tracker rollups
rebuild``) rolls their days up again. Whoever refreshes first does the work; the
others wait on a lock and find it done.

The first refresh of a database that already holds months of rows rolls up the
newest day first and then older days a few at a time, each in a transaction of
its own, a slice of time per refresh: the 24-hour window comes from rollups
within seconds rather than after the whole build (the hour window always reads
raw rows), and what is not rolled up yet (the "head" before :data:`FLOOR_KEY`)
is read from the raw rows meanwhile.
"""

from __future__ import annotations

import math
import threading
import time
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    and_,
    case,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement as Expr

from flow_tracker.status import FINISHED_STATUSES, Status
from flow_tracker.store.engine import Store
from flow_tracker.store.histogram import BUCKET_BASE, MIN_DURATION_MS
from flow_tracker.store.schema import flows, processes, rollup_counts, rollup_durations, state
from flow_tracker.store.types import UTCDateTime, as_utc

# An hour is rolled up this long after it ends (the writer flushes within seconds).
GRACE = timedelta(minutes=2)
# Hours rolled up again on every refresh, to count rows that were stored late.
RECHECK = timedelta(hours=2)
# Hour rows older than this are dropped; longer windows read day rows.
KEEP_HOURS = timedelta(days=35)
WATERMARK_KEY = "rollups.hourly_until"
# Set while a first build still rolls up older days: hours before it are not rolled up.
FLOOR_KEY = "rollups.hourly_from"
# Days a first build rolls up per transaction, newest first, after the newest day.
FILL_CHUNK = timedelta(days=2)
# How long one refresh goes on with a first build before it leaves the rest to the
# next: the newest hours, the keeper's publishing and a reaper's other work wait meanwhile.
FILL_SLICE = 10.0
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
T = TypeVar("T")
_PG_LOCK_KEY = 0x666C6F78  # any constant, distinct from the migration lock
_FINISHED = sorted(s.value for s in FINISHED_STATUSES)
_COUNT_COLUMNS = [
    "grain",
    "kind",
    "bucket_start",
    "name",
    "category",
    "status",
    "count",
    "duration_ms_sum",
    "retried",
]


@dataclass(frozen=True)
class CountRow:
    """Finished processes (kind "p") or flows ("f") of one name, category and status."""

    kind: str
    name: str
    category: str
    status: str
    count: int
    duration_ms_sum: float
    retried: int = 0
    """How many of them took more than one attempt (none in rollup rows older than 0006)."""


#: Duration histograms per (kind, name): bucket -> count.
Histograms = dict[tuple[str, str], dict[int, int]]


def _pack(histogram: dict[int, int]) -> tuple[int, list[int]]:
    """A histogram as (first bucket, dense list of counts): one row holds a whole name."""
    first, last = min(histogram), max(histogram)
    return first, [histogram.get(b, 0) for b in range(first, last + 1)]


def _unpack_into(target: dict[int, int], first: int, counts: Any) -> None:
    get = target.get
    for bucket, count in enumerate(counts or (), first):
        if count:
            target[bucket] = get(bucket, 0) + count


@dataclass(frozen=True)
class SeriesRow:
    """Finished processes of one status in the time bucket starting at ``start``."""

    start: datetime
    status: str
    count: int


def floor_hour(value: datetime) -> datetime:
    """``value`` rounded down to the hour (UTC)."""
    return value.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def floor_day(value: datetime) -> datetime:
    """``value`` rounded down to midnight (UTC)."""
    return floor_hour(value).replace(hour=0)


def _trunc(store: Store, unit: str, column: Any) -> Expr[datetime]:
    if store.dialect == "postgresql":
        # The three-argument form truncates in UTC whatever the session's TimeZone.
        return func.date_trunc(unit, column, "UTC", type_=UTCDateTime)
    pattern = "%Y-%m-%d %H:00:00.000000" if unit == "hour" else "%Y-%m-%d 00:00:00.000000"
    return func.strftime(pattern, column, type_=UTCDateTime)


def _bucket(store: Store, column: Any) -> Expr[int]:
    if store.dialect == "postgresql":
        ratio = func.ln(func.greatest(column, MIN_DURATION_MS)) / math.log(BUCKET_BASE)
        return cast(func.floor(ratio), Integer)
    return func.flow_tracker_bucket(column, type_=Integer)


def _sources(store: Store) -> list[tuple[str, Any, Any]]:
    """(kind, table, category expression) of what is rolled up."""
    return [
        ("p", processes, processes.c.category),
        ("f", flows, literal("", String)),
    ]


def _retried(table: Any) -> Any:
    """How many rows took more than one attempt (a flow has no attempts of its own)."""
    if "attempt" not in table.c:
        return literal(0, BigInteger)
    return func.coalesce(func.sum(case((table.c.attempt > 1, 1), else_=0)), 0)


class RollupVersion(NamedTuple):
    """The rollups' state as a reader sees it (see :func:`read_version`)."""

    watermark: datetime | None
    """Hours before it are rolled up (from :attr:`rolled_from` on); None before any refresh."""
    stamp: str
    """Changes whenever a refresh rewrites rollup rows: sums cached under it stay valid."""
    rolled_from: datetime | None = None
    """While a first build still rolls up older days: hours before it are not rolled up."""


def read_version(conn: Connection) -> RollupVersion:
    """The watermark, a stamp that changes whenever a refresh rewrites rollups, the floor."""
    rows = {
        r.key: r
        for r in conn.execute(
            select(state.c.key, state.c.value, state.c.updated_at).where(
                state.c.key.in_((WATERMARK_KEY, FLOOR_KEY))
            )
        )
    }
    mark = rows.get(WATERMARK_KEY)
    if mark is None:
        return RollupVersion(None, "")
    floor = rows.get(FLOOR_KEY)
    if floor is None:
        return RollupVersion(datetime.fromisoformat(mark.value), str(mark.updated_at))
    # Each chunk of a first build moves the floor: the stamp moves with it.
    return RollupVersion(
        datetime.fromisoformat(mark.value),
        f"{mark.updated_at}|{floor.value}",
        datetime.fromisoformat(floor.value),
    )


def stored_version(store: Store) -> RollupVersion:
    """:func:`read_version` on a connection of its own (no refresh)."""
    store.ensure_schema()
    with store.engine.connect() as conn:
        return read_version(conn)


def read_watermark(conn: Connection) -> datetime | None:
    """The end of the last hour rolled up, or None before the first refresh."""
    value = conn.execute(select(state.c.value).where(state.c.key == WATERMARK_KEY)).scalar()
    return None if value is None else datetime.fromisoformat(value)


def _write_watermark(conn: Connection, until: datetime, now: datetime) -> None:
    conn.execute(state.delete().where(state.c.key == WATERMARK_KEY))
    conn.execute(insert(state).values(key=WATERMARK_KEY, value=until.isoformat(), updated_at=now))


def _read_floor(conn: Connection) -> datetime | None:
    value = conn.execute(select(state.c.value).where(state.c.key == FLOOR_KEY)).scalar()
    return None if value is None else datetime.fromisoformat(value)


def _write_floor(conn: Connection, floor: datetime | None, now: datetime) -> None:
    conn.execute(state.delete().where(state.c.key == FLOOR_KEY))
    if floor is not None:
        conn.execute(insert(state).values(key=FLOOR_KEY, value=floor.isoformat(), updated_at=now))


def _drop_old_hours(conn: Connection, before: datetime) -> None:
    for table in (rollup_counts, rollup_durations):
        old = and_(table.c.grain == "h", table.c.bucket_start < before)
        conn.execute(table.delete().where(old))


def _analyze(store: Store) -> None:
    """Give the planner the rollups' statistics now, not at autovacuum's next pass.

    After a build writes many rows at once, a wrong guess sorts on disk.
    """
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            conn.execute(text(f"ANALYZE {rollup_counts.name}, {rollup_durations.name}"))
            conn.commit()


def _roll_hours(conn: Connection, store: Store, start: datetime, end: datetime) -> None:
    for grain_table in (rollup_counts, rollup_durations):
        conn.execute(
            grain_table.delete().where(
                and_(
                    grain_table.c.grain == "h",
                    grain_table.c.bucket_start >= start,
                    grain_table.c.bucket_start < end,
                )
            )
        )
    for kind, table, category in _sources(store):
        finished = and_(
            table.c.finished_at >= start,
            table.c.finished_at < end,
            table.c.status.in_(_FINISHED),
        )
        hour = _trunc(store, "hour", table.c.finished_at)
        counts = (
            select(
                literal("h"),
                literal(kind),
                hour,
                table.c.name,
                category,
                table.c.status,
                func.count(),
                func.coalesce(func.sum(table.c.duration_ms), 0.0),
                _retried(table),
            )
            .where(finished)
            .group_by(hour, table.c.name, category, table.c.status)
        )
        conn.execute(
            insert(rollup_counts).from_select(
                _COUNT_COLUMNS,
                counts,
            )
        )
        bucket = _bucket(store, table.c.duration_ms)
        durations = (
            select(hour.label("hour"), table.c.name, bucket.label("bucket"), func.count())
            .where(and_(finished, table.c.duration_ms.is_not(None)))
            .group_by(hour, table.c.name, bucket)
        )
        grouped: dict[tuple[Any, str], dict[int, int]] = {}
        for hour_start, name, bucket_index, count in conn.execute(durations):
            grouped.setdefault((hour_start, name), {})[int(bucket_index)] = int(count)
        _insert_histograms(conn, "h", kind, grouped)


def _insert_histograms(
    conn: Connection, grain: str, kind: str, grouped: dict[tuple[Any, str], dict[int, int]]
) -> None:
    rows = []
    for (start, name), histogram in grouped.items():
        first, counts = _pack(histogram)
        rows.append(
            {
                "grain": grain,
                "kind": kind,
                "bucket_start": as_utc(start),
                "name": name,
                "first_bucket": first,
                "counts": counts,
            }
        )
    for offset in range(0, len(rows), 5_000):
        conn.execute(insert(rollup_durations), rows[offset : offset + 5_000])


def _roll_days(conn: Connection, store: Store, start: datetime, end: datetime) -> None:
    """Sum the hour rows of the whole days in [start, end) into day rows."""
    if start >= end:
        return
    for table in (rollup_counts, rollup_durations):
        conn.execute(
            table.delete().where(
                and_(
                    table.c.grain == "d",
                    table.c.bucket_start >= start,
                    table.c.bucket_start < end,
                )
            )
        )
    day = _trunc(store, "day", rollup_counts.c.bucket_start)
    hours = and_(
        rollup_counts.c.grain == "h",
        rollup_counts.c.bucket_start >= start,
        rollup_counts.c.bucket_start < end,
    )
    c = rollup_counts.c
    conn.execute(
        insert(rollup_counts).from_select(
            _COUNT_COLUMNS,
            select(
                literal("d"),
                c.kind,
                day,
                c.name,
                c.category,
                c.status,
                func.sum(c.count),
                func.sum(c.duration_ms_sum),
                func.sum(c.retried),
            )
            .where(hours)
            .group_by(c.kind, day, c.name, c.category, c.status),
        )
    )
    d = rollup_durations.c
    by_kind: dict[str, dict[tuple[Any, str], dict[int, int]]] = {}
    for kind, hour_start, name, first, counts in conn.execute(
        select(d.kind, d.bucket_start, d.name, d.first_bucket, d.counts).where(
            and_(d.grain == "h", d.bucket_start >= start, d.bucket_start < end)
        )
    ):
        day_start = floor_day(as_utc(hour_start))
        _unpack_into(by_kind.setdefault(kind, {}).setdefault((day_start, name), {}), first, counts)
    for kind, grouped in by_kind.items():
        _insert_histograms(conn, "d", kind, grouped)


def _earliest_finish(conn: Connection) -> datetime | None:
    values = [
        conn.execute(select(func.min(table.c.finished_at))).scalar() for table in (processes, flows)
    ]
    present = [v for v in values if v is not None]
    if not present:
        return None
    return min(as_utc(v) for v in present)


def refresh(store: Store, now: datetime) -> datetime:
    """Roll up every closed hour not rolled up yet (and the last few again).

    On a database never rolled up, the newest day is rolled up and committed
    first, then the older days a chunk at a time (see the module's docstring),
    for :data:`FILL_SLICE` seconds per refresh; the next refresh goes on from
    where this one (or one interrupted half-way) stopped.

    Args:
        store: the tracking database.
        now: the database's current time.

    Returns:
        The new watermark: hours before it are in the rollups.
    """
    store.ensure_schema()
    watermark = _roll_newest(store, floor_hour(now - GRACE), now)
    _fill_older(store, now)
    return watermark


def _roll_newest(store: Store, closed_until: datetime, now: datetime) -> datetime:
    """Roll up the hours since the watermark (on a first build: the newest day)."""
    with store.engine.connect() as conn:
        with conn.begin():
            watermark = read_watermark(conn)
        if watermark is not None and watermark >= closed_until:
            return watermark
        conn = conn.execution_options(flow_tracker_begin="IMMEDIATE")
        with conn.begin():
            _locked(conn, store)
            watermark = read_watermark(conn)  # another reader may have done it meanwhile
            if watermark is not None and watermark >= closed_until:
                return watermark
            if watermark is None:
                earliest = _earliest_finish(conn)
                oldest = floor_hour(earliest) if earliest is not None else closed_until
                # At least the last whole day, so that the 24-hour window is covered.
                start = max(oldest, floor_day(closed_until) - DAY)
                if start > oldest:
                    _write_floor(conn, start, now)
            else:
                start = min(watermark - RECHECK, closed_until)
            _roll_hours(conn, store, start, closed_until)
            # Today's day row too (rolled again at every refresh): the category
            # filter lists what ran today, and the row is complete once the day is.
            _roll_days(conn, store, floor_day(start), floor_day(closed_until) + DAY)
            _drop_old_hours(conn, closed_until - KEEP_HOURS)
            _write_watermark(conn, closed_until, now)
    if closed_until - start > timedelta(hours=6):
        _analyze(store)
    return closed_until


def _fill_older(store: Store, now: datetime) -> None:
    """Roll up the days before the floor, newest first, a chunk per transaction.

    For :data:`FILL_SLICE` seconds at most (a chunk begun is finished); the next
    refresh goes on from the floor.
    """
    filled = False
    stop_at = time.monotonic() + FILL_SLICE
    with store.engine.connect() as conn:
        while not filled or time.monotonic() < stop_at:
            with conn.begin():
                if _read_floor(conn) is None:
                    break
            writing = conn.execution_options(flow_tracker_begin="IMMEDIATE")
            with writing.begin():
                _locked(writing, store)
                floor = _read_floor(writing)  # another reader may have rolled it meanwhile
                watermark = read_watermark(writing)
                if floor is None or watermark is None:
                    break
                earliest = _earliest_finish(writing)
                oldest = floor_hour(earliest) if earliest is not None else floor
                # The floor is a midnight: every chunk rolls whole days (hours of a day
                # before ``oldest`` hold nothing, so its day row is whole too).
                start = max(oldest, floor - FILL_CHUNK)
                if start < floor:
                    _roll_hours(writing, store, start, floor)
                    _roll_days(writing, store, floor_day(start), floor)
                    _drop_old_hours(writing, watermark - KEEP_HOURS)
                _write_floor(writing, start if start > oldest else None, now)
                filled = True
    if filled:
        _analyze(store)


@dataclass(frozen=True)
class Rebuilt:
    """What :func:`rebuild` rolled up again."""

    start: datetime | None
    """The first hour rebuilt (None: nothing had finished yet)."""
    until: datetime
    """The new watermark: every closed hour before it is in the rollups."""
    days: int
    """Days rolled up again, each in a transaction of its own."""


def _locked(conn: Connection, store: Store) -> None:
    """Take the rollups' lock for this transaction (SQLite: its IMMEDIATE begin does)."""
    if store.dialect == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")


def rebuild(
    store: Store,
    now: datetime,
    *,
    since: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Rebuilt:
    """Roll up again every hour from ``since`` (default: the first finished row) to now.

    :func:`refresh` rolls up new hours and looks back ``RECHECK`` hours for rows
    stored late; rows that arrive later than that (a restore, an import, a long
    outage of the database) are in the lists but not in the charts until this runs.
    Each day is rebuilt in a transaction of its own, under the lock refreshes take,
    so the dashboard keeps answering and a refresh running meanwhile waits for one
    day, never for the whole rebuild. Rollups of hours before ``since`` (or of rows
    deleted since by a cleanup) are kept.

    Args:
        store: the tracking database (written: run it where the dashboard can write).
        now: the database's current time.
        since: the first day to rebuild (rounded down to midnight UTC).
        progress: called with (days done, days in all) after each day.

    Returns:
        What was rebuilt, and the new watermark.
    """
    store.ensure_schema()
    closed_until = floor_hour(now - GRACE)
    with store.engine.connect() as conn:
        earliest = _earliest_finish(conn) if since is None else as_utc(since)
    if earliest is None or earliest >= closed_until:
        start = None
        days: list[datetime] = []
    else:
        # Whole days: a day row sums that day's hour rows, and the hours of a day
        # older than KEEP_HOURS are gone, so a day is never rebuilt in part.
        start = floor_day(earliest)
        days = [start + DAY * n for n in range((closed_until - start) // DAY + 1)]
        days = [day for day in days if day < closed_until]
    writing = store.engine.connect().execution_options(flow_tracker_begin="IMMEDIATE")
    with writing as conn:
        for done, day in enumerate(days, start=1):
            with conn.begin():
                _locked(conn, store)
                _roll_hours(conn, store, day, min(day + DAY, closed_until))
                _roll_days(conn, store, day, day + DAY)
                for table in (rollup_counts, rollup_durations):
                    conn.execute(
                        table.delete().where(
                            and_(
                                table.c.grain == "h",
                                table.c.bucket_start >= day,
                                table.c.bucket_start < closed_until - KEEP_HOURS,
                            )
                        )
                    )
            if progress is not None:
                progress(done, len(days))
        with conn.begin():
            _locked(conn, store)
            # A new stamp even when the watermark stays: readers' sums of the rolled-up
            # part (cached by version) are made again from the rebuilt rows.
            _write_watermark(conn, closed_until, now)
            if since is None:  # every day since the first finished row: a first build is done
                _write_floor(conn, None, now)
    if len(days) > 1:
        _analyze(store)
    return Rebuilt(start=start, until=closed_until, days=len(days))


@dataclass(frozen=True)
class Span:
    """A time window split into what the rollups hold and the raw rows around them.

    Rollups cover [rollup_start, rolled_until) (whole hours); raw rows cover the
    tail [tail_start, end) and, while a first build has not reached the window's
    start yet, the head [head_start, rollup_start). A window of an hour or less
    reads raw rows only.
    """

    start: datetime
    end: datetime
    rollup_start: datetime
    rolled_until: datetime
    tail_start: datetime
    version: str = ""  # read_version's stamp: rollup rows change only when it does
    head_start: datetime | None = None  # None: no head

    def raw_condition(self, table: Any) -> ColumnElement[bool]:
        """Finished rows of ``table`` in the parts of the span read from raw rows."""
        tail = _raw_filter(table, self.tail_start, self.end)
        if self.head_start is None or self.head_start >= self.rollup_start:
            return tail
        return or_(tail, _raw_filter(table, self.head_start, self.rollup_start))

    def cache_key(self, store: Store, what: str, *extra: Any) -> tuple[Any, ...]:
        """Identifies the rolled-up part of this span's ``what`` (see :func:`_cached`)."""
        return (
            str(store.url),
            what,
            self.rollup_start,
            self.rolled_until,
            self.version,
            *extra,
        )

    @property
    def has_rollups(self) -> bool:
        """Whether any part of the window is read from rollups."""
        return self.rolled_until > self.rollup_start

    def rollup_condition(self, table: Any) -> ColumnElement[bool]:
        """Rows of ``table`` (counts or durations) that make up the rolled-up part.

        Hour rows up to the first midnight, day rows of the whole days, then hour
        rows again for the last (partial) day. Today's day row is not read even
        though it exists: it holds the hours up to the *current* watermark, which
        may be later than the one this span was made with (another reader refreshed
        meanwhile, or the span comes from a state published earlier), and the raw
        tail after this span's watermark would then be counted twice.
        """
        h0, until = self.rollup_start, self.rolled_until
        bs, grain = table.c.bucket_start, table.c.grain
        d0 = h0 if floor_day(h0) == h0 else floor_day(h0) + DAY
        d1 = floor_day(until)
        parts = []
        if h0 < min(d0, until):
            parts.append(and_(grain == "h", bs >= h0, bs < min(d0, until)))
        if d0 < until:
            parts.append(and_(grain == "d", bs >= d0, bs < d1))
            parts.append(and_(grain == "h", bs >= max(d0, d1), bs < until))
        return or_(*parts) if parts else ~true()


def make_span(
    start: datetime,
    end: datetime,
    watermark: datetime | None,
    version: str = "",
    rolled_from: datetime | None = None,
) -> Span:
    """Split [start, end) given the rollups' state (see :class:`RollupVersion`).

    Hours in [rolled_from, watermark) are rolled up (from the first hour on when
    ``rolled_from`` is None). The start of a long window is rounded down to the
    hour it falls in.
    """
    h0 = floor_hour(start)
    first = h0 if rolled_from is None else max(h0, rolled_from)
    until = h0 if watermark is None else min(watermark, floor_hour(end))
    if end - start <= HOUR or until <= first:
        return Span(start, end, rollup_start=h0, rolled_until=h0, tail_start=start, version=version)
    return Span(
        start,
        end,
        rollup_start=first,
        rolled_until=until,
        tail_start=until,
        version=version,
        head_start=h0 if first > h0 else None,
    )


_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 128


def _cached(key: tuple[Any, ...], compute: Callable[[], T]) -> T:
    """``compute()``, remembered under ``key`` by this process.

    The rolled-up part of a window is fixed until a refresh rewrites the rollups,
    which changes the span's version and so the key: the month of day rows behind a
    30-day overview is summed once an hour, not on every page view.
    """
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return typing.cast(T, _CACHE[key])
    value = compute()
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def _raw_filter(table: Any, start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(
        table.c.finished_at >= start,
        table.c.finished_at < end,
        table.c.status.in_(_FINISHED),
    )


def _rolled_counts(conn: Connection, store: Store, span: Span) -> list[CountRow]:
    """The rolled-up part of :func:`read_counts` (remembered until the rollups change)."""
    c = rollup_counts.c

    def rolled() -> list[CountRow]:
        return [
            CountRow(
                r.kind,
                r.name,
                r.category,
                r.status,
                int(r.n),
                float(r.total or 0),
                int(r.retried or 0),
            )
            for r in conn.execute(
                select(
                    c.kind,
                    c.name,
                    c.category,
                    c.status,
                    func.sum(c.count).label("n"),
                    func.sum(c.duration_ms_sum).label("total"),
                    func.sum(c.retried).label("retried"),
                )
                .where(_span_rollups(span, rollup_counts))
                .group_by(c.kind, c.name, c.category, c.status)
            )
        ]

    return _cached(span.cache_key(store, "counts"), rolled)


def read_counts(
    conn: Connection, store: Store, span: Span, *, category: str | None = None
) -> list[CountRow]:
    """Counts per kind, name, category and status over the span (rollups + tail).

    ``category``: only the processes of this category (no flows).
    """
    rows = [
        r
        for r in _rolled_counts(conn, store, span)
        if category is None or (r.kind == "p" and r.category == category)
    ]
    for kind, table, category_column in _sources(store):
        if category is not None and kind != "p":
            continue
        query = _tail_counts(table, category_column, span, category)
        rows.extend(
            CountRow(kind, r.name, r.category, r.status, int(r.n), float(r.total), int(r.retried))
            for r in conn.execute(query).all()  # fetchall: far cheaper than row by row
        )
    return rows


def _tail_counts(table: Any, category_column: Any, span: Span, category: str | None) -> Any:
    """Counts per name, category and status of the raw rows after the rollups."""
    where = span.raw_condition(table)
    if category is not None:
        where = and_(where, table.c.category == category)
    return (
        select(
            table.c.name,
            category_column.label("category"),
            table.c.status,
            func.count().label("n"),
            func.coalesce(func.sum(table.c.duration_ms), 0.0).label("total"),
            _retried(table).label("retried"),
        )
        .where(where)
        .group_by(table.c.name, category_column, table.c.status)
    )


@dataclass(frozen=True)
class NameTotals:
    """Finished processes per name over a span, summed by name (see :func:`count_totals`)."""

    finished: dict[str, int]
    failed: dict[str, int]
    retried: dict[str, int]
    """Of ``finished``, how many took more than one attempt."""


def count_totals(conn: Connection, store: Store, span: Span, *, category: str) -> NameTotals:
    """What :func:`read_counts` says of the processes of ``category``, summed by name.

    Summed as the rows are read: a tail of thousands of names (a wide fan-out
    in the last hour) leaves no object per row alive behind it.
    """
    finished: dict[str, int] = {}
    failed: dict[str, int] = {}
    retried: dict[str, int] = {}

    def add(name: str, status: str, count: int, took_retries: int) -> None:
        finished[name] = finished.get(name, 0) + count
        retried[name] = retried.get(name, 0) + took_retries
        if status == Status.FAILED.value:
            failed[name] = failed.get(name, 0) + count

    for row in _rolled_counts(conn, store, span):
        if row.kind == "p" and row.category == category:
            add(row.name, row.status, row.count, row.retried)
    query = _tail_counts(processes, processes.c.category, span, category)
    for chunk in conn.execute(query).partitions(1000):
        for name, _category, status, count, _total, took_retries in chunk:
            add(name, status, int(count), int(took_retries))
    return NameTotals(finished, failed, retried)


def _rolled_histograms(conn: Connection, store: Store, span: Span) -> Histograms:
    """The rolled-up part of :func:`read_histograms` (remembered until the rollups change)."""
    d = rollup_durations.c
    # The lists are summed bucket by bucket in SQL: a month of names is thousands of
    # rows of ~30 counters, which the database adds up far faster than Python.
    if store.dialect == "postgresql":
        cells = func.unnest(d.counts).table_valued("n", with_ordinality="i").render_derived()
        bucket = d.first_bucket + cells.c.i - 1
        count = cells.c.n
    else:
        cells = func.json_each(d.counts).table_valued("key", "value")
        bucket = d.first_bucket + cells.c.key
        count = cells.c.value
    summed = (
        select(d.kind, d.name, bucket.label("bucket"), func.sum(count).label("n"))
        .select_from(rollup_durations.join(cells, true()))
        .where(_span_rollups(span, rollup_durations))
        .group_by(d.kind, d.name, bucket)
    )

    def rolled() -> Histograms:
        found: Histograms = {}
        for kind, name, bucket_index, n in conn.execute(summed):
            if n:
                found.setdefault((kind, name), {})[int(bucket_index)] = int(n)
        return found

    return _cached(span.cache_key(store, "histograms"), rolled)


def read_histograms(
    conn: Connection, store: Store, span: Span, *, names: Callable[[str], bool] | None = None
) -> Histograms:
    """Duration histograms per kind and name over the span (rollups + tail).

    ``names``: only the processes whose name it accepts (no flows). The rolled-up
    histograms are shared with other readers: a name's is copied only when the
    tail adds to it.
    """
    histograms: Histograms = {
        key: buckets
        for key, buckets in _rolled_histograms(conn, store, span).items()
        if names is None or (key[0] == "p" and names(key[1]))
    }
    copied: set[tuple[str, str]] = set()
    for kind, table, _category in _sources(store):
        if names is not None and kind != "p":
            continue
        bucket = _bucket(store, table.c.duration_ms)
        query = (
            select(table.c.name, bucket.label("bucket"), func.count().label("n"))
            .where(
                and_(
                    span.raw_condition(table),
                    table.c.duration_ms.is_not(None),
                )
            )
            .group_by(table.c.name, bucket)
        )
        # In chunks: a wide fan-out's tail is thousands of rows, none kept past its use.
        for name, bucket_index, n in (
            row for chunk in conn.execute(query).partitions(1000) for row in chunk
        ):
            if names is not None and not names(name):
                continue
            _add_to_histogram(histograms, copied, (kind, name), int(bucket_index), int(n))
    return histograms


def _add_to_histogram(
    histograms: Histograms, copied: set[tuple[str, str]], key: tuple[str, str], bucket: int, n: int
) -> None:
    """Add ``n`` to a bucket of ``key``'s histogram, copying it first if it is shared.

    The rolled-up histograms are remembered for other readers: one is copied
    only when the raw rows add to it (``copied`` says which were).
    """
    if key not in copied:
        histograms[key] = dict(histograms.get(key, {}))
        copied.add(key)
    target = histograms[key]
    target[bucket] = target.get(bucket, 0) + n


def read_counts_and_histograms(
    conn: Connection, store: Store, span: Span
) -> tuple[list[CountRow], Histograms]:
    """:func:`read_counts` and :func:`read_histograms` of every kind and name, together.

    The raw rows of the span are read once per table, grouped by name, status and
    duration bucket, rather than once for the counts and again for the
    histograms: the overview of the last hour of a busy fleet reads only raw rows
    (70,000 flows an hour at 10 M processes a month), and each pass over them was
    a third of its time.
    """
    counts = list(_rolled_counts(conn, store, span))
    histograms: Histograms = dict(_rolled_histograms(conn, store, span))
    copied: set[tuple[str, str]] = set()
    for kind, table, category_column in _sources(store):
        duration = table.c.duration_ms
        bucket = case((duration.is_(None), None), else_=_bucket(store, duration))
        query = (
            select(
                table.c.name,
                category_column.label("category"),
                table.c.status,
                bucket.label("bucket"),
                func.count().label("n"),
                func.coalesce(func.sum(duration), 0.0).label("total"),
                _retried(table).label("retried"),
            )
            .where(span.raw_condition(table))
            .group_by(table.c.name, category_column, table.c.status, bucket)
        )
        summed: dict[tuple[str, str, str], list[float]] = {}
        for name, category, status, bucket_index, n, total, retried in (
            row for chunk in conn.execute(query).partitions(1000) for row in chunk
        ):
            cell = summed.setdefault((name, category, status), [0, 0.0, 0])
            cell[0] += int(n)
            cell[1] += float(total)
            cell[2] += int(retried)
            if bucket_index is not None:
                _add_to_histogram(histograms, copied, (kind, name), int(bucket_index), int(n))
        counts.extend(
            CountRow(kind, name, category, status, int(n), total, int(retried))
            for (name, category, status), (n, total, retried) in summed.items()
        )
    return counts, histograms


def _span_rollups(span: Span, table: Any) -> ColumnElement[bool]:
    if not span.has_rollups:
        return ~true()
    return span.rollup_condition(table)


def _epoch_bucket(store: Store, column: Any, seconds: int) -> Expr[int]:
    if store.dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / seconds), Integer)
    return cast(func.strftime("%s", column), Integer) // seconds


def _rolled_series(conn: Connection, store: Store, span: Span, bar_seconds: int) -> list[SeriesRow]:
    """The rolled-up part of :func:`read_series` (remembered until the rollups change)."""
    if not span.has_rollups:
        return []
    c = rollup_counts.c
    if bar_seconds >= DAY.total_seconds():
        rows = span.rollup_condition(rollup_counts)
    else:  # bars shorter than a day: hour rows
        rows = and_(
            c.grain == "h",
            c.bucket_start >= span.rollup_start,
            c.bucket_start < span.rolled_until,
        )
    query = (
        select(c.bucket_start, c.status, func.sum(c.count).label("n"))
        .where(and_(c.kind == "p", rows))
        .group_by(c.bucket_start, c.status)
    )

    def rolled() -> list[SeriesRow]:
        return [
            SeriesRow(_bar(r.bucket_start, bar_seconds), r.status, int(r.n))
            for r in conn.execute(query)
        ]

    return _cached(span.cache_key(store, "series", bar_seconds), rolled)


def read_series(conn: Connection, store: Store, span: Span, bar_seconds: int) -> list[SeriesRow]:
    """Finished processes per status in bars of ``bar_seconds`` (aligned to the epoch)."""
    out = list(_rolled_series(conn, store, span, bar_seconds))
    tail_bar = _epoch_bucket(store, processes.c.finished_at, bar_seconds)
    for r in conn.execute(
        select(tail_bar.label("bar"), processes.c.status, func.count().label("n"))
        .where(span.raw_condition(processes))
        .group_by(tail_bar, processes.c.status)
    ):
        start = datetime.fromtimestamp(int(r.bar) * bar_seconds, timezone.utc)
        out.append(SeriesRow(start, r.status, int(r.n)))
    return out


def warm(conn: Connection, store: Store, span: Span, bar_seconds: int) -> None:
    """Sum the rolled-up part of ``span`` now, so the next reader of it finds it summed."""
    _rolled_counts(conn, store, span)
    _rolled_histograms(conn, store, span)
    _rolled_series(conn, store, span, bar_seconds)


def _bar(start: Any, bar_seconds: int) -> datetime:
    epoch = int(as_utc(start).timestamp())
    return datetime.fromtimestamp(epoch - epoch % bar_seconds, timezone.utc)


def names(conn: Connection, kind: str, since: datetime) -> Iterable[str]:
    """Names of processes or flows seen in the rollups since ``since`` (for search)."""
    c = rollup_counts.c
    return conn.execute(
        select(c.name).where(and_(c.kind == kind, c.bucket_start >= since)).distinct()
    ).scalars()
