"""Dashboard statistics: rollups agree with the raw rows, percentiles are close, late rows count."""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from flow_tracker.store import queries, rollups
from flow_tracker.store.engine import Store
from flow_tracker.store.histogram import duration_bucket, percentile
from flow_tracker.store.schema import flows, processes, rollup_counts
from flow_tracker.web import statistics
from flow_tracker.web.statistics_keeper import StatisticsKeeper


def _process(name: str, status: str, finished: datetime, duration_ms: float) -> dict[str, Any]:
    started = finished - timedelta(milliseconds=duration_ms)
    return {
        "id": uuid.uuid4(),
        "name": name,
        "category": "jobs" if name != "Report" else "reports",
        "status": status,
        "created_at": started,
        "started_at": started,
        "finished_at": finished,
        "duration_ms": duration_ms,
        "attempt": 1,
    }


def _flow(process: dict[str, Any], name: str, duration_ms: float) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "process_id": process["id"],
        "name": name,
        "status": "completed",
        "started_at": process["started_at"],
        "finished_at": process["started_at"] + timedelta(milliseconds=duration_ms),
        "duration_ms": duration_ms,
        "attempt": 1,
        "position": 0,
        "depth": 0,
    }


@pytest.fixture
def store(database_url: str) -> Any:
    store = Store(database_url)
    store.ensure_schema()
    yield store
    store.dispose()


def _history(store: Store, count: int, days: float, seed: int = 3) -> list[dict[str, Any]]:
    """``count`` finished processes over the last ``days`` days, each with one flow."""
    rng = random.Random(seed)
    now = queries.database_time(store)
    rows, flow_rows = [], []
    for _ in range(count):
        finished = now - timedelta(seconds=rng.uniform(1, days * 86_400))
        name = rng.choice(["Email", "Webhook", "Report"])
        typical = {"Email": 50.0, "Webhook": 200.0, "Report": 5_000.0}[name]
        status = "failed" if rng.random() < 0.1 else "completed"
        row = _process(name, status, finished, typical * rng.lognormvariate(0, 0.6))
        rows.append(row)
        flow_rows.append(_flow(row, f"{name}.step", row["duration_ms"] / 2))
    with store.engine.begin() as conn:
        conn.execute(insert(processes), rows)
        conn.execute(insert(flows), flow_rows)
    return rows


def _raw_counts(store: Store, since: datetime) -> dict[str, int]:
    with store.engine.connect() as conn:
        found = conn.execute(
            select(processes.c.status, func.count())
            .where(processes.c.finished_at >= since)
            .group_by(processes.c.status)
        ).all()
    return {status: int(n) for status, n in found}


@pytest.mark.parametrize("window", ["1h", "24h", "7d", "30d"])
def test_overview_counts_equal_the_raw_rows_in_every_window(store: Store, window: str) -> None:
    _history(store, 3_000, days=40)
    summary = statistics.overview(store, window)
    # Long windows start at the top of the hour they fall in (rollups are hourly).
    start = summary.start
    if window != "1h":
        start = rollups.floor_hour(start)
    assert summary.finished == _raw_counts(store, start)
    assert sum(b.total for b in summary.bars) == summary.finished_total
    with store.engine.connect() as conn:
        rolled = conn.execute(select(func.count()).select_from(rollup_counts)).scalar_one()
    assert rolled > 0  # the rollups exist and were used


def test_percentiles_from_histograms_are_within_ten_percent(store: Store) -> None:
    rows = _history(store, 4_000, days=6)
    summary = statistics.overview(store, "7d")
    for stats in summary.slow_processes:
        durations = sorted(r["duration_ms"] for r in rows if r["name"] == stats.name)
        assert stats.count == len(durations)
        for fraction, estimate in ((0.5, stats.p50_ms), (0.95, stats.p95_ms)):
            exact = durations[math.ceil(fraction * len(durations)) - 1]
            assert estimate is not None
            assert abs(estimate - exact) / exact < 0.10, (stats.name, fraction, estimate, exact)
    flow_names = {s.name for s in summary.slow_flows}
    assert flow_names == {"Email.step", "Webhook.step", "Report.step"}


def test_rows_stored_late_are_counted_at_the_next_refresh(store: Store) -> None:
    _history(store, 500, days=3)
    statistics.overview(store, "24h")  # rolls up every closed hour
    now = queries.database_time(store)
    late_time = rollups.floor_hour(now) - timedelta(minutes=30)  # an hour already rolled up
    late = _process("Email", "completed", late_time, 40.0)
    with store.engine.begin() as conn:
        conn.execute(insert(processes), [late])
        # Pretend the watermark moved on by an hour so that the next refresh runs.
        rollups._write_watermark(conn, rollups.floor_hour(now) - timedelta(hours=1), now)
    summary = statistics.overview(store, "24h")
    assert summary.finished == _raw_counts(store, rollups.floor_hour(summary.start))


def test_refresh_is_idempotent_and_concurrent_refreshes_agree(store: Store) -> None:
    _history(store, 800, days=10)
    now = queries.database_time(store)
    first = rollups.refresh(store, now)
    with store.engine.connect() as conn:
        before = conn.execute(
            select(func.sum(rollup_counts.c.count)).where(rollup_counts.c.grain == "h")
        ).scalar_one()
    with store.engine.begin() as conn:
        rollups._write_watermark(conn, first - timedelta(hours=5), now)
    assert rollups.refresh(store, now) == first
    with store.engine.connect() as conn:
        after = conn.execute(
            select(func.sum(rollup_counts.c.count)).where(rollup_counts.c.grain == "h")
        ).scalar_one()
    assert before == after


def test_empty_database_gives_an_empty_overview(store: Store) -> None:
    summary = statistics.overview(store, "30d")
    assert summary.finished == {}
    assert summary.failure_rate is None
    assert summary.slow_processes == []
    assert all(bar.total == 0 for bar in summary.bars)


def test_unknown_window_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="window must be one of"):
        statistics.overview(store, "1y")


def test_histogram_buckets_and_percentile_edges() -> None:
    assert duration_bucket(None) is None
    assert duration_bucket(0) == duration_bucket(-5)  # clamped to the smallest duration
    assert duration_bucket(1.0) == 0
    assert (duration_bucket(1000.0) or 0) >= (duration_bucket(999.0) or 0)
    assert percentile({}, 0.5) is None
    assert percentile({duration_bucket(100.0) or 0: 10}, 0.5) == pytest.approx(100, rel=0.2)


def test_rollup_times_are_utc_hours(store: Store) -> None:
    _history(store, 100, days=2)
    statistics.overview(store, "7d")
    with store.engine.connect() as conn:
        starts = conn.execute(select(rollup_counts.c.bucket_start).distinct()).scalars().all()
    assert starts
    for start in starts:
        assert start.tzinfo is not None
        assert start.astimezone(timezone.utc).minute == 0 and start.second == 0
        assert start <= datetime.now(timezone.utc)


def test_keeper_publishes_the_rollup_state_it_warmed(store: Store) -> None:
    _history(store, 1_500, days=9)
    keeper = StatisticsKeeper(store)
    assert keeper.state is None  # nothing published before the first warm-up
    state = keeper.tick()
    with store.engine.connect() as conn:
        assert state == rollups.read_version(conn)
    for window in statistics.WINDOWS:
        kept = statistics.overview(store, window, rollup_state=state)
        fresh = statistics.overview(store, window)
        assert kept.finished == fresh.finished
        assert kept.slow_flows == fresh.slow_flows


@pytest.mark.parametrize("window", ["24h", "7d"])
def test_an_older_published_state_still_gives_exact_counts(store: Store, window: str) -> None:
    _history(store, 1_000, days=3)
    now = queries.database_time(store)
    rollups.refresh(store, now - timedelta(hours=6))
    with store.engine.connect() as conn:
        old_state = rollups.read_version(conn)
    rollups.refresh(store, now)  # the rollups move on; a reader keeps the older state
    summary = statistics.overview(store, window, rollup_state=old_state)
    assert summary.finished == _raw_counts(store, rollups.floor_hour(summary.start))


def test_keeper_thread_warms_in_the_background_and_stops(store: Store) -> None:
    _history(store, 300, days=2)
    keeper = StatisticsKeeper(store, interval=0.05)
    keeper.ensure_running()
    deadline = time.monotonic() + 30
    while keeper.state is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert keeper.state is not None
    keeper.stop()
    alive = [t for t in threading.enumerate() if t.name == "flow-tracker-statistics"]
    assert not any(t.is_alive() for t in alive)


def test_retried_processes_are_counted_in_the_rollups_and_the_raw_tail(store: Store) -> None:
    now = queries.database_time(store)
    rows = []
    for k, finished in enumerate([now - timedelta(days=2), now - timedelta(minutes=1)] * 10):
        row = _process("Webhook", "completed", finished, 10.0)
        row["attempt"] = 1 + (k % 4 == 0) + (k % 8 == 0)  # 5 of 20 took 2 or 3 attempts
        rows.append(row)
    step = _process("checkout.charge", "completed", now - timedelta(days=2), 10.0)
    step["category"], step["attempt"] = "workflows", 3
    rows.append(step)
    with store.engine.begin() as conn:
        conn.execute(insert(processes), rows)
    rollups.refresh(store, now)
    with store.engine.connect() as conn:
        version = rollups.read_version(conn)
        span = statistics.window_span("7d", now, *version)
        counts = rollups.read_counts(conn, store, span)
        only_workflows = rollups.read_counts(conn, store, span, category="workflows")
        rolled = conn.execute(select(func.sum(rollup_counts.c.retried))).scalar_one()
    webhook = [r for r in counts if r.name == "Webhook"]
    assert sum(r.count for r in webhook) == 20
    assert sum(r.retried for r in webhook) == 5  # rolled-up days and the raw tail together
    assert rolled >= 3  # the rollups hold the old half (and the step)
    assert [(r.name, r.count, r.retried) for r in only_workflows] == [("checkout.charge", 1, 1)]


def test_totals_by_name_say_what_the_counts_say_rolled_up_and_in_the_tail(store: Store) -> None:
    _history(store, 2_000, days=10)
    now = queries.database_time(store)
    rows = []
    for k in range(30):  # old (rolled up) and recent (the raw tail), a tenth failed
        finished = now - (timedelta(days=3) if k % 2 else timedelta(minutes=2))
        row = _process(f"checkout.step{k % 3}", "failed" if k % 10 == 0 else "completed",
                       finished, 10.0)  # fmt: skip
        row["category"], row["attempt"] = "workflows", 1 + (k % 5 == 0)
        rows.append(row)
    with store.engine.begin() as conn:
        conn.execute(insert(processes), rows)
    rollups.refresh(store, now)
    with store.engine.connect() as conn:
        span = statistics.window_span("7d", now, *rollups.read_version(conn))
        counts = rollups.read_counts(conn, store, span, category="workflows")
        totals = rollups.count_totals(conn, store, span, category="workflows")
    expected: dict[str, list[int]] = {}
    for r in counts:
        entry = expected.setdefault(r.name, [0, 0, 0])
        entry[0] += r.count
        entry[1] += r.count if r.status == "failed" else 0
        entry[2] += r.retried
    assert set(totals.finished) == set(expected) == {f"checkout.step{k}" for k in range(3)}
    for name, (count, failed, retried) in expected.items():
        assert totals.finished[name] == count
        assert totals.failed.get(name, 0) == failed
        assert totals.retried[name] == retried
    assert sum(totals.finished.values()) == 30 and sum(totals.failed.values()) == 3
    assert sum(totals.retried.values()) == 6


def _exact(stats: Any) -> tuple[Any, ...]:
    return (stats.name, stats.count, stats.failed, stats.p50_ms, stats.p95_ms)


def _rollup_rows(store: Store) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return sorted(
            tuple(r)
            for r in conn.execute(
                select(
                    rollup_counts.c.grain,
                    rollup_counts.c.kind,
                    rollup_counts.c.bucket_start,
                    rollup_counts.c.name,
                    rollup_counts.c.status,
                    rollup_counts.c.count,
                )
            )
        )


def _newest_day_rolled_up(store: Store, count: int, days: float) -> datetime:
    """A history, then a first build's first transaction only (as if it stopped there)."""
    _history(store, count, days=days)
    now = queries.database_time(store)
    rollups._roll_newest(store, rollups.floor_hour(now - rollups.GRACE), now)
    return now


@pytest.mark.parametrize("window", ["24h", "7d", "30d"])
def test_a_first_build_half_done_gives_exact_counts_and_the_next_refresh_finishes_it(
    store: Store, window: str
) -> None:
    now = _newest_day_rolled_up(store, 3_000, days=40)
    half_state = rollups.stored_version(store)
    assert half_state.rolled_from is not None
    assert half_state.rolled_from <= rollups.floor_hour(now) - timedelta(hours=24)
    # The day window already reads rollups and no raw head; longer ones read a head.
    assert statistics.window_span("24h", now, *half_state).head_start is None
    assert statistics.window_span("24h", now, *half_state).has_rollups
    half = statistics.overview(store, window, rollup_state=half_state)
    assert half.finished == _raw_counts(store, rollups.floor_hour(half.start))

    rollups.refresh(store, now)  # goes on from the floor, a chunk per transaction
    done_state = rollups.stored_version(store)
    assert done_state.rolled_from is None and done_state.stamp != half_state.stamp
    done = statistics.overview(store, window, rollup_state=done_state)
    assert done.finished == half.finished
    pairs = ((done.slow_processes, half.slow_processes), (done.slow_flows, half.slow_flows))
    for finished, halfway in pairs:
        # The same histograms; the averages only differ in the order floats were added.
        assert [_exact(s) for s in finished] == [_exact(s) for s in halfway]
        for a, b in zip(finished, halfway, strict=True):
            assert a.avg_ms == pytest.approx(b.avg_ms, rel=1e-9)
    assert [b.total for b in done.bars] == [b.total for b in half.bars]

    # Chunk by chunk, newest first, it wrote what one rebuild of every day writes.
    built = _rollup_rows(store)
    rollups.rebuild(store, now)
    assert _rollup_rows(store) == built


def test_a_rebuild_of_every_day_ends_a_first_build_half_done(store: Store) -> None:
    now = _newest_day_rolled_up(store, 500, days=10)
    assert rollups.stored_version(store).rolled_from is not None
    rollups.rebuild(store, now)
    assert rollups.stored_version(store).rolled_from is None


@pytest.mark.parametrize("window", ["1h", "24h", "7d"])
def test_counts_and_histograms_read_together_say_what_they_say_read_apart(
    store: Store, window: str
) -> None:
    _history(store, 2_000, days=8)
    now = queries.database_time(store)
    undated = _process("Email", "completed", now - timedelta(minutes=5), 10.0)
    undated["duration_ms"] = None  # counted, in no histogram
    with store.engine.begin() as conn:
        conn.execute(insert(processes), [undated])
    rollups.refresh(store, now)
    span = statistics.window_span(window, now, *rollups.stored_version(store))
    with store.engine.connect() as conn:
        together_counts, together_histograms = rollups.read_counts_and_histograms(conn, store, span)
        apart_counts = rollups.read_counts(conn, store, span)
        apart_histograms = rollups.read_histograms(conn, store, span)
    assert together_histograms == apart_histograms

    def summed(rows: list[rollups.CountRow]) -> dict[tuple[str, ...], tuple[int, float, int]]:
        out: dict[tuple[str, ...], tuple[int, float, int]] = {}
        for r in rows:
            n, total, retried = out.get((r.kind, r.name, r.category, r.status), (0, 0.0, 0))
            out[(r.kind, r.name, r.category, r.status)] = (
                n + r.count,
                total + r.duration_ms_sum,
                retried + r.retried,
            )
        return out

    together, apart = summed(together_counts), summed(apart_counts)
    assert together.keys() == apart.keys()
    for key, (n, total, retried) in apart.items():
        assert (together[key][0], together[key][2]) == (n, retried), key
        assert together[key][1] == pytest.approx(total, rel=1e-9), key


def test_a_first_build_goes_a_slice_per_refresh_and_each_state_gives_exact_counts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history(store, 1_500, days=12)
    monkeypatch.setattr(rollups, "FILL_SLICE", 0.0)  # one chunk per refresh
    now = queries.database_time(store)
    floors = []
    for _ in range(20):
        rollups.refresh(store, now)
        state = rollups.stored_version(store)
        floors.append(state.rolled_from)
        summary = statistics.overview(store, "30d", rollup_state=state)
        assert summary.finished == _raw_counts(store, rollups.floor_hour(summary.start))
        if state.rolled_from is None:
            break
    # Newest day first, then two days per refresh, each floor older than the last.
    assert floors[-1] is None and len(floors) >= 4, floors
    moved = [f for f in floors if f is not None]
    assert moved == sorted(moved, reverse=True) and len(set(moved)) == len(moved)
