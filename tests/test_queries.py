"""Reading: list filters and keyset pages, statuses by process or job id, batches, cleanup."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert, update

import flow_tracker
from flow_tracker import Status, runtime
from flow_tracker.recording import open_tracker
from flow_tracker.store.schema import log_entries, processes


def make(name: str, *, category: str = "jobs", fail: bool = False, **meta: object) -> uuid.UUID:
    try:
        with flow_tracker.track(name, category=category, metadata=meta or None) as tracker:
            tracker.info(f"log of {name}")
            if fail:
                raise RuntimeError("failed on purpose")
    except RuntimeError:
        pass
    return tracker.process_id


def age(process_id: uuid.UUID, days: float) -> None:
    """Move a stored process ``days`` into the past."""
    flow_tracker.flush()
    store = runtime.store()
    when = datetime.now(timezone.utc) - timedelta(days=days)
    with store.engine.begin() as conn:
        conn.execute(update(processes).where(processes.c.id == process_id).values(created_at=when))


def test_list_filters_by_status_category_name_metadata_and_search(tracked: str) -> None:
    ok = make("import", category="jobs", tenant="acme", tier=2)
    bad = make("import", category="jobs", fail=True, tenant="globex")
    api = make("webhook", category="api", tenant="acme")

    def ids(**filters: object) -> set[uuid.UUID]:
        return {p.id for p in flow_tracker.list_processes(**filters)}  # type: ignore[arg-type]

    assert ids() == {ok, bad, api}
    assert ids(status="failed") == {bad}
    assert ids(status=["completed", "failed"], category="jobs") == {ok, bad}
    assert ids(category="api") == {api}
    assert ids(name="import") == {ok, bad}
    assert ids(metadata={"tenant": "acme"}) == {ok, api}
    assert ids(metadata={"tenant": "acme", "tier": 2}) == {ok}
    assert ids(search="WEBHOOK") == {api}
    assert ids(search="log of import") == {ok, bad}
    assert ids(search="100%_") == set()
    with pytest.raises(ValueError, match="bogus"):
        flow_tracker.list_processes(status="bogus")


def test_list_filters_by_time_range(tracked: str) -> None:
    old = make("old")
    new = make("new")
    age(old, 3)
    since = datetime.now(timezone.utc) - timedelta(days=1)
    assert {p.id for p in flow_tracker.list_processes(since=since)} == {new}
    assert {p.id for p in flow_tracker.list_processes(until=since)} == {old}


def test_list_pages_with_a_keyset_cursor_newest_first(tracked: str) -> None:
    made = [make(f"p{i}") for i in range(25)]
    seen: list[uuid.UUID] = []
    cursor = None
    pages = 0
    while True:
        page = flow_tracker.list_processes(limit=10, cursor=cursor)
        seen += [p.id for p in page]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made))
    with pytest.raises(flow_tracker.UsageError, match="cursor"):
        flow_tracker.list_processes(cursor="not-a-cursor")


def test_get_status_by_process_id_and_by_job_id(tracked: str) -> None:
    tracker = open_tracker("queued job", None, None, extra={"job_id": "celery-abc-123"})
    assert isinstance(tracker, flow_tracker.Tracker)
    tracker.progress.total = 4
    tracker.progress.current = 1
    tracker.update_metadata(step="A")
    flow_tracker.flush()
    by_job = flow_tracker.get_status("celery-abc-123")
    by_id = flow_tracker.get_status(tracker.process_id)
    assert by_job is not None and by_id is not None
    assert by_job.process_id == by_id.process_id == tracker.process_id
    assert by_job.is_running and not by_job.is_completed
    assert by_job.progress == 0.25 and by_job["step"] == "A" and by_job.get("nope") is None
    tracker.complete()
    done = flow_tracker.get_status("celery-abc-123")
    assert done is not None and done.is_completed and done.progress == 1.0
    as_dict = done.to_dict()
    assert as_dict["status"] == "completed" and as_dict["job_id"] == "celery-abc-123"
    assert '"status": "completed"' in done.to_json()
    assert flow_tracker.get_status("no-such-job") is None
    assert flow_tracker.get_status(uuid.uuid4()) is None


def test_batch_status_follows_activejob_status_rules(tracked: str) -> None:
    ok1, ok2 = make("a"), make("b")
    bad = make("c", fail=True)
    running = flow_tracker.start("d")
    assert flow_tracker.batch_status([ok1, ok2]).status is Status.COMPLETED
    assert flow_tracker.batch_status([ok1, bad, running.process_id]).is_failed
    mixed = flow_tracker.batch_status([ok1, running.process_id])
    assert mixed.is_running and mixed.progress == pytest.approx(0.5)
    assert flow_tracker.batch_status(["unknown-1", "unknown-2"]).is_queued
    partly = flow_tracker.batch_status([ok1, "unknown"])
    assert partly.status is Status.RUNNING and partly.missing == ["unknown"]
    running.complete()


def test_get_process_returns_none_for_unknown_and_rejects_non_ids(tracked: str) -> None:
    assert flow_tracker.get_process(uuid.uuid4()) is None
    with pytest.raises(flow_tracker.UsageError):
        flow_tracker.get_process("not-a-uuid")


def test_cleanup_deletes_old_processes_with_flows_and_logs_in_batches(tracked: str) -> None:
    old = [make(f"old{i}") for i in range(7)]
    keep = make("recent")
    running = flow_tracker.start("old but running")
    flow_tracker.flush()
    for process_id in [*old, running.process_id]:
        age(process_id, 10)
    assert flow_tracker.cleanup(days=7, dry_run=True) == 7
    store = runtime.store()
    from sqlalchemy import func, select

    from flow_tracker.store import queries
    from flow_tracker.store.schema import flows, log_entries

    def rows_of(processes: list[uuid.UUID]) -> tuple[int, int]:
        with store.engine.connect() as conn:
            logs = conn.execute(
                select(func.count()).where(log_entries.c.process_id.in_(processes))
            ).scalar_one()
            flow_rows = conn.execute(
                select(func.count()).where(flows.c.process_id.in_(processes))
            ).scalar_one()
        return int(logs), int(flow_rows)

    before = rows_of(old)
    assert before[0] > 0
    assert queries.cleanup(store, 7, batch_size=3) == 7
    assert flow_tracker.get_process(old[0]) is None
    assert flow_tracker.get_process(keep) is not None
    assert flow_tracker.get_process(running.process_id) is not None
    if store.dialect == "sqlite":
        assert rows_of(old) == (0, 0)  # deleted with their processes
    else:
        # Partitioned by time: the processes were aged, their rows were not; rows
        # newer than the cutoff go with their partition, not with their process.
        assert rows_of(old) == before
    assert flow_tracker.cleanup(days=7, statuses=["running"]) == 1
    running.complete()


def test_cleanup_defaults_to_retention_days(tracked: str) -> None:
    flow_tracker.configure(database_url=tracked, retention_days=30, log_to_stdlib=False)
    young, old = make("young"), make("old")
    age(young, 20)
    age(old, 40)
    assert flow_tracker.cleanup() == 1
    assert flow_tracker.get_process(young) is not None


def _v7_at(moment: datetime, rng: random.Random) -> uuid.UUID:
    """A UUIDv7 made at ``moment`` (random low bits)."""
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | rng.getrandbits(76))


# Each way the search may take (see store/queries._search), forced on small data.
SEARCH_PATHS: dict[str, dict[str, Any]] = {
    "probe": {},
    "probe in small chunks": {"_PROBE_CHUNK": 5},
    "full scan": {"_PROBE_CHUNKS": 0},
    "full scan, walking the list": {"_PROBE_CHUNKS": 0, "_WALK_OVER": 2, "_WALK_CHUNK": 7},
    "full scan, many stretches": {
        "_PROBE_CHUNKS": 0,
        "_RECENT_STRETCHES": tuple(timedelta(minutes=m) for m in (5, 30, 180, 720)),
    },
}


@pytest.mark.parametrize(
    ("path", "seed"),
    [(path, seed) for path in SEARCH_PATHS for seed in ((1, 2, 3) if path == "probe" else (1,))],
)
def test_search_pages_equal_a_full_scan_whatever_the_age_of_the_matching_logs(
    tracked: str, seed: int, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flow_tracker.store import queries

    for name, value in SEARCH_PATHS[path].items():
        monkeypatch.setattr(queries, name, value)
    # Processes created over two days, some running for hours, with log entries
    # written any time after their start: the stretched backwards read of the logs
    # must give exactly the pages a full scan would.
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    store = runtime.store()
    store.ensure_schema()
    rows: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    for index in range(300):
        created = now - timedelta(seconds=rng.uniform(0, 2 * 86_400))
        pid = _v7_at(created, rng)
        name = "NeedleJob" if rng.random() < 0.05 else f"Job{index % 7}"
        rows.append(
            {
                "id": pid,
                "name": name,
                "category": "jobs",
                "status": "running",
                "created_at": created,
                "attempt": 1,
            }
        )
        for position in range(rng.randrange(0, 4)):
            written = created + (now - created) * rng.random() ** 3
            text = "found the needle here" if rng.random() < 0.08 else "nothing to see"
            logs.append(
                {
                    "id": _v7_at(written, rng),
                    "process_id": pid,
                    "level": "info",
                    "message": text,
                    "created_at": written,
                    "position": position,
                }
            )
    with store.engine.begin() as conn:
        conn.execute(insert(processes), rows)
        conn.execute(insert(log_entries), logs)
    with_logs = {log["process_id"] for log in logs if "needle" in log["message"]}
    expected = [
        r["id"]
        for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)
        if "needle" in r["name"].lower() or r["id"] in with_logs
    ]
    assert expected, "the sample should match something"
    for page_size in (1, 4, 50):
        seen: list[uuid.UUID] = []
        cursor = None
        while True:
            page = flow_tracker.list_processes(search="NEEDLE", limit=page_size, cursor=cursor)
            seen.extend(p.id for p in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected
    for page_size in (1, 4, 500):
        seen = []
        cursor = None
        while True:
            page = flow_tracker.list_processes(
                search="needle", order="oldest", limit=page_size, cursor=cursor
            )
            seen.extend(p.id for p in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected[::-1]


def test_a_cleanup_preview_counts_exactly_up_to_its_cap_and_says_more_than_beyond(
    tracked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from flow_tracker.store import retention
    from flow_tracker.web import create_app

    old = [make(f"old{i}") for i in range(9)]
    running = flow_tracker.start("old but running")
    flow_tracker.flush()
    for process_id in [*old, running.process_id]:
        age(process_id, 10)
    store = runtime.store()
    exact = retention.preview_cleanup(store, 7)
    assert (exact.count, exact.exact) == (9, True) == (retention.count_for_cleanup(store, 7), True)
    capped = retention.preview_cleanup(store, 7, exact_up_to=4)
    # 10 older than the cutoff counted as "more than 4", less the running one kept.
    assert (capped.count, capped.exact) == (3, False)
    assert capped.count < retention.count_for_cleanup(store, 7)
    if store.dialect == "postgresql":  # the planner's guess, shown only above the count
        assert capped.estimate is None or capped.estimate > capped.count
    else:
        assert capped.estimate is None
    # More unfinished than counted: what would go is counted with the full condition.
    mostly_unfinished = retention.preview_cleanup(store, 7, exact_up_to=1)
    assert (mostly_unfinished.count, mostly_unfinished.exact) == (1, False)
    by_status = retention.preview_cleanup(store, 7, ["completed"], exact_up_to=4)
    assert (by_status.count, by_status.exact) == (4, False)
    assert retention.preview_cleanup(store, 7, ["running"], exact_up_to=4).count == 1

    app = create_app(tracked)
    with TestClient(app) as client:
        assert "9 processes will be deleted" in client.get("/cleanup?days=7").text
        monkeypatch.setattr(retention, "PREVIEW_EXACT_UP_TO", 4)
        page = client.get("/cleanup?days=7").text
    app.state.dashboard.store.dispose()
    assert "More than 3 processes will be deleted" in page and "delete them all" in page
    running.complete()


@pytest.mark.parametrize("window", [3, 20_000])
def test_metadata_pages_are_the_same_whether_found_among_the_first_rows_or_by_the_index(
    tracked: str, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flow_tracker.store import queries

    # A window of 3 sends every page's rest to the index; 20,000 finds all in the window.
    monkeypatch.setattr(queries, "METADATA_WINDOW", window)
    tenants = ["common"] * 14 + ["rare"] * 3
    random.Random(4).shuffle(tenants)
    made: dict[str, list[uuid.UUID]] = {"common": [], "rare": []}
    failed: set[uuid.UUID] = set()
    for n, tenant in enumerate(tenants):
        pid = make(f"job{n}", tenant=tenant, outcome="failed" if n % 2 else "ok")
        made[tenant].append(pid)
        if n % 2:
            failed.add(pid)
    flow_tracker.flush()
    store = runtime.store()
    for tenant, expected in made.items():
        for order in ("newest", "oldest"):
            seen: list[uuid.UUID] = []
            cursor = None
            while True:
                page = queries.list_processes(
                    store, metadata={"tenant": tenant}, limit=2, cursor=cursor, order=order
                )
                seen += [p.id for p in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert seen == (expected if order == "oldest" else expected[::-1]), (tenant, order)
        both = queries.list_processes(store, metadata={"tenant": tenant, "outcome": "failed"})
        assert {p.id for p in both.items} == set(expected) & failed
