"""Names, ids, queues and hosts longer than their columns: cut to fit with a marker, never dropped.

PostgreSQL refuses a value longer than its ``varchar(255)`` column, and with it
the whole row (SQLite keeps it): these run on both databases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

import flow_tracker
from flow_tracker import jobs
from flow_tracker import tracker as tracker_module
from flow_tracker.redaction import truncate
from flow_tracker.store import queries
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import flows, log_entries, processes

LENGTHS = (255, 256, 300, 10_000)


@pytest.fixture
def store(tracked: str) -> Iterator[Store]:
    """A second store on the tracked database, to read what was stored."""
    reader = Store(tracked)
    yield reader
    reader.dispose()


@pytest.mark.parametrize("length", LENGTHS)
def test_a_long_process_and_flow_name_is_cut_to_fit_and_the_records_are_kept(
    store: Store, length: int
) -> None:
    with flow_tracker.track("P" * length, metadata={"k": "v"}) as tracker:
        with tracker.flow("F" * length) as flow:
            flow.info("inside")
        tracker.info("outside")
    flow_tracker.flush()
    record = queries.get_process(store, tracker.process_id)
    assert record is not None, "the process row was dropped"
    assert len(record.name) <= 255
    if length > 255:
        assert record.name.startswith("P" * 200) and record.name.endswith(" chars]")
    with store.engine.connect() as conn:
        names = conn.execute(
            select(flows.c.name).where(flows.c.process_id == tracker.process_id)
        ).scalars()
        assert [len(n) <= 255 for n in names] == [True]
        logs = conn.execute(
            select(log_entries.c.message).where(log_entries.c.process_id == tracker.process_id)
        ).scalars()
        assert sorted(logs) == ["inside", "outside"]


@pytest.mark.parametrize("length", LENGTHS)
def test_a_queued_job_with_a_long_id_and_queue_has_its_row_and_is_seen_by_health(
    store: Store, length: int
) -> None:
    job_id = "j" * length
    process_id = jobs.record_enqueued(
        job_system="rq", job_id=job_id, name="N" * length, queue="q" * length
    )
    assert process_id is not None
    flow_tracker.flush()
    with store.engine.connect() as conn:
        row = conn.execute(
            select(processes.c.status, processes.c.job_id, processes.c.queue).where(
                processes.c.id == process_id
            )
        ).one_or_none()
    assert row is not None, "the queued job's row was dropped"
    assert row.status == "queued"
    assert len(row.job_id) <= 255 and len(row.queue) <= 255
    # The health check sees it: the oldest queued job's age comes from its row.
    assert flow_tracker.health(store=store).oldest_queued_age_s is not None


def test_a_long_host_name_is_cut_to_fit(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracker_module, "_hostname", "h" * 300)
    with flow_tracker.track("on a long host") as tracker:
        pass
    flow_tracker.flush()
    record = queries.get_process(store, tracker.process_id)
    assert record is not None and record.host is not None and len(record.host) == 255


@pytest.mark.parametrize("limit", [255, 30, 10, 1])
@pytest.mark.parametrize("length", [256, 300, 999, 1_000, 10_000, 1_000_000])
def test_truncate_keeps_the_marker_inside_the_limit(limit: int, length: int) -> None:
    cut = truncate("x" * length, limit)
    assert len(cut) == limit
    if limit >= 30:
        kept = cut.index("…")
        assert cut.endswith(f"…[truncated {length - kept} chars]")


def test_a_name_with_nul_and_surrogates_near_the_limit_still_fits(store: Store) -> None:
    name = "\x00\ud800" * 200  # each becomes a six-character escape
    with flow_tracker.track(name) as tracker:
        pass
    flow_tracker.flush()
    record = queries.get_process(store, tracker.process_id)
    assert record is not None and len(record.name) <= 255
    assert record.name.startswith("\\u0000\\ud800")
    assert isinstance(tracker.process_id, uuid.UUID)
