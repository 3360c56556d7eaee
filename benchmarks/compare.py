"""Comparing a run with its last good run: two runs of 5,000 flows, and the baseline at 1M.

``python -m benchmarks compare [--quick] [--readme]``, on PostgreSQL:

* two runs of ``nightly_import`` with 5,000 flows each (50 ``batch`` flows of a
  loop, each with a ``fetch`` and 98 ``row`` flows) and 4,950 log lines,
  stored as the writer stores them; the second run has a slower flow, missing
  and new flows, a failed one and a changed metadata key. Timed after a
  warm-up, 30 times each: :func:`flow_tracker.comparison.compare_runs` (every
  read and every decision), the same with ``to_dict`` and JSON (what the API
  sends), and ``GET /api/processes/{id}/compare`` and the page (their
  ``Server-Timing``), served by ``flow-tracker serve`` (a process of its own,
  its start-up heap frozen) and mounted in this process. Twice: logs that
  differ at their last line (both read to the end) and at their tenth. Goal:
  the API, served, answers in 200 ms or less (p95);
* the baseline's look-up among 1,000,000 processes (100,000 with ``--quick``)
  of 200 job names, the newest 90 % of each name's runs failed (a job failing
  for weeks): 200 look-ups with the partial index
  ``ix_flow_tracker_processes_completed_name_started``, then without it (as
  before migration 0008), and the plan of each; with the time the index takes
  to build (what the migration costs at that size).

Every run writes ``benchmarks/results/compare.md``; ``--readme`` also replaces the
docs/benchmarks.md's ``<!-- benchmark:compare -->`` section.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from sqlalchemy import insert, text
from starlette.testclient import TestClient

import flow_tracker
from benchmarks.readme import machine_line, publish
from benchmarks.workflow_pages import _served
from benchmarks.workflows import fresh_pg_database
from flow_tracker.comparison import compare_runs
from flow_tracker.ids import new_id
from flow_tracker.store import comparison as stored
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import flows, log_entries, processes
from flow_tracker.web import create_app

REPEATS = 30
BATCHES = 50
ROWS = 98  # per batch, beside its fetch: 50 * (1 + 1 + 98) = 5,000 flows
LOOKUPS = 200
NAMES = 200
GOAL_MS = 200.0
INDEX = "ix_flow_tracker_processes_completed_name_started"


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _run(store: Store, start: datetime, *, changed: bool, late_difference: bool) -> uuid.UUID:
    """One run of 5,000 flows and as many log lines; ``changed``: the run that broke."""
    pid = new_id()
    position = 0
    flow_rows: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []

    def flow(name: str, parent: uuid.UUID | None, depth: int, ms: float, status: str) -> uuid.UUID:
        nonlocal position
        fid = new_id()
        flow_rows.append(
            {
                "id": fid,
                "process_id": pid,
                "parent_id": parent,
                "name": name,
                "status": status,
                "started_at": start,
                "finished_at": start,
                "duration_ms": ms,
                "attempt": 1,
                "position": position,
                "depth": depth,
            }
        )
        position += 1
        return fid

    def log(message: str, flow_id: uuid.UUID | None, level: str = "info") -> None:
        nonlocal position
        log_rows.append(
            {
                "id": new_id(),
                "process_id": pid,
                "flow_id": flow_id,
                "level": level,
                "message": message,
                "created_at": start,
                "position": position,
            }
        )
        position += 1

    for b in range(BATCHES):
        batch = flow("batch", None, 0, 400.0, "completed")
        fetch_ms = 240.0 if changed and b == 7 else 40.0
        log(f"batch {b}: fetched {ROWS} rows", flow("fetch", batch, 1, fetch_ms, "completed"))
        for r in range(ROWS):
            status = "failed" if changed and b == 30 and r == 5 else "completed"
            # Three rows of one batch are gone from the run that broke; their lines are
            # still written (in the batch), so that its log differs only where told.
            missing = changed and b == 20 and r >= ROWS - 3
            row = batch if missing else flow("row", batch, 1, 3.0, status)
            log(f"row {r} of batch {b} stored", row)
        if changed and b == 40:
            flow("retry", batch, 1, 12.0, "completed")
            flow("retry", batch, 1, 12.0, "completed")
    if not late_difference:
        log_rows[9]["level"] = "warning" if changed else "info"
    elif changed:
        log_rows[-1]["message"] = "row stored twice"
    with store.engine.begin() as conn:
        conn.execute(
            insert(processes).values(
                id=pid,
                name="nightly_import",
                category="jobs",
                status="failed" if changed else "completed",
                metadata={"provider": "adyen" if changed else "stripe", "rows": 4_900},
                created_at=start,
                started_at=start,
                finished_at=start + timedelta(seconds=30),
                updated_at=start,
                duration_ms=31_000.0 if changed else 30_000.0,
                attempt=1,
            )
        )
        for offset in range(0, len(flow_rows), 2_000):
            conn.execute(insert(flows), flow_rows[offset : offset + 2_000])
        for offset in range(0, len(log_rows), 2_000):
            conn.execute(insert(log_entries), log_rows[offset : offset + 2_000])
    return pid


def _timed(action: Any) -> tuple[float, float]:
    action()
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000.0)
    return _p(times, 0.5), _p(times, 0.95)


def _server_ms(client: Any, path: str) -> tuple[float, float]:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    times = []
    for _ in range(REPEATS):
        response = client.get(path)
        times.append(float(response.headers["server-timing"].split("dur=")[1]))
    return _p(times, 0.5), _p(times, 0.95)


def _measured(
    store: Store, mounted: TestClient, served: httpx.Client, broken: uuid.UUID
) -> list[tuple[str, tuple[float, float]]]:
    api, page = f"/api/processes/{broken}/compare", f"/processes/{broken}/compare"
    return [
        ("compare_runs (reads and decisions)", _timed(lambda: compare_runs(store, broken))),
        (
            "compare_runs + to_dict + JSON",
            _timed(lambda: json.dumps(compare_runs(store, broken).to_dict())),
        ),
        ("API, served", _server_ms(served, api)),
        ("API, mounted", _server_ms(mounted, api)),
        ("page, served", _server_ms(served, page)),
        ("page, mounted", _server_ms(mounted, page)),
    ]


def _two_runs(url: str) -> tuple[list[str], list[str]]:
    store = Store(url, reader=True, statement_timeout=30.0)
    writer = Store(url)
    writer.ensure_schema()
    now = datetime.now(timezone.utc) - timedelta(hours=2)
    rows = [
        "| two runs of 5,000 flows and 4,950 log lines | p50 ms | p95 ms |",
        "|---|---:|---:|",
    ]
    misses: list[str] = []
    app = create_app(url, keep_statistics=False)
    with (
        TestClient(app) as mounted,
        _served(url) as base,
        httpx.Client(base_url=base, timeout=60) as served,
    ):
        for late in (True, False):
            good = _run(writer, now, changed=False, late_difference=late)
            broken = _run(writer, now + timedelta(minutes=1), changed=True, late_difference=late)
            now += timedelta(minutes=2)
            found = compare_runs(store, broken)
            assert found.baseline is not None and found.baseline.id == good, "baseline"
            assert found.log_difference is not None
            label = f"logs differ at line {found.log_difference.index + 1:,}"
            print(f"  {label}: {found.summary}")
            for name, (p50, p95) in _measured(store, mounted, served, broken):
                print(f"    {name:40} p50 {p50:6.1f}  p95 {p95:6.1f} ms")
                rows.append(f"| {name}, {label} | {p50:.0f} | {p95:.0f} |")
                if name == "API, served" and p95 > GOAL_MS:
                    misses.append(f"API p95 {p95:.0f} ms, {label} (goal ≤ {GOAL_MS:.0f})")
    app.state.dashboard.store.dispose()
    store.dispose()
    writer.dispose()
    return rows, misses


def _fill(url: str, total: int) -> None:
    """``total`` processes of NAMES names, the newest 90 % of each name's failed."""
    store = Store(url)
    store.ensure_schema()
    per_name = total // NAMES
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO flow_tracker_processes (id, name, category, status, metadata,"
                " created_at, started_at, finished_at, duration_ms, attempt)"
                " SELECT gen_random_uuid(), 'job' || (g % :names),"
                " 'jobs', CASE WHEN g / :names < :good THEN 'completed' ELSE 'failed' END,"
                " '{}'::jsonb,"
                " now() - interval '2 seconds' * (:total - g) - interval '1 day',"
                " now() - interval '2 seconds' * (:total - g) - interval '1 day',"
                " now() - interval '2 seconds' * (:total - g) - interval '1 day'"
                " + interval '1 second', 1000, 1"
                " FROM generate_series(0, :total - 1) g"
            ),
            # As text: the server casts; the driver would send small numbers as smallint.
            {"names": str(NAMES), "good": str(per_name // 10), "total": str(total)},
        )
    with store.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "VACUUM ANALYZE flow_tracker_processes"
        )
    store.dispose()


def _plan(store: Store, run: flow_tracker.ProcessRecord) -> str:
    statement = stored.baseline_query(run)
    with store.engine.connect() as conn:
        sql = str(statement.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").scalar_one()

    def shown(node: dict[str, Any]) -> str:
        what = node["Node Type"]
        if "Index Name" in node:
            what += f" on {node['Index Name']}"
        read = int(node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0))
        what += f" ({read:,} row{'' if read == 1 else 's'})"
        below = [shown(child) for child in node.get("Plans", [])]
        if len(below) == 1:
            return f"{what} over {below[0]}"
        return f"{what} over [{'; '.join(below)}]" if below else what

    buffers = plan[0]["Plan"].get("Shared Hit Blocks", 0) + plan[0]["Plan"].get(
        "Shared Read Blocks", 0
    )
    return f"{shown(plan[0]['Plan'])}; {buffers:,} buffers"


def _lookups(store: Store, targets: list[flow_tracker.ProcessRecord]) -> tuple[float, float]:
    for run in targets[:10]:
        stored.last_completed_before(store, run)
    times = []
    for run in targets:
        began = time.perf_counter()
        found = stored.last_completed_before(store, run)
        times.append((time.perf_counter() - began) * 1000.0)
        assert found is not None and found.name == run.name
    return _p(times, 0.5), _p(times, 0.95)


def _baseline_at_scale(url: str, total: int) -> list[str]:
    _fill(url, total)
    store = Store(url, reader=True, statement_timeout=120.0)
    moment = datetime.now(timezone.utc)
    targets = [
        flow_tracker.ProcessRecord(
            id=uuid.UUID(int=(1 << 127) - 1),  # after every id of the moment
            name=f"job{i % NAMES}",
            category="jobs",
            status=flow_tracker.Status.FAILED,
            metadata={},
            error=None,
            created_at=moment,
            queued_at=None,
            started_at=moment,
            finished_at=None,
            duration_ms=None,
            progress_current=0,
            progress_total=0,
            job_system=None,
            job_id=None,
            queue=None,
            attempt=1,
            parent_process_id=None,
            host=None,
            pid=None,
            heartbeat_at=None,
            dropped_logs=0,
        )
        for i in range(LOOKUPS)
    ]
    with_index = _lookups(store, targets)
    plan_with = _plan(store, targets[0])
    admin = Store(url)
    with admin.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX {INDEX}")
    without = _lookups(store, targets)
    plan_without = _plan(store, targets[0])
    began = time.perf_counter()
    with admin.engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE INDEX {INDEX} ON flow_tracker_processes (name, started_at, id)"
            " WHERE status = 'completed'"
        )
    build_s = time.perf_counter() - began
    admin.dispose()
    store.dispose()
    print(
        f"    with the index:    p50 {with_index[0]:.2f}  p95 {with_index[1]:.2f} ms · {plan_with}"
    )
    print(f"    without the index: p50 {without[0]:.2f}  p95 {without[1]:.2f} ms · {plan_without}")
    print(f"    building the index: {build_s:.1f} s")
    return [
        f"| the baseline among {total:,} processes ({NAMES} names, 90 % failed) | p50 ms "
        "| p95 ms | plan of one look-up |",
        "|---|---:|---:|---|",
        f"| with `{INDEX}` (0008) | {with_index[0]:.2f} | {with_index[1]:.2f} | {plan_with} |",
        f"| without it (before 0008) | {without[0]:.2f} | {without[1]:.2f} | {plan_without} |",
        "",
        f"Building the index at {total:,} processes (migration 0008) took {build_s:.1f} s.",
    ]


def main(argv: list[str]) -> int:
    """Time the comparison; exit 1 when the goal is missed."""
    warnings.simplefilter("ignore")
    quick = "--quick" in argv
    total = 100_000 if quick else 1_000_000
    url = fresh_pg_database("flow_tracker_bench_compare")
    print(f"\ncompare ({'quick' if quick else 'full'}), PostgreSQL\n")
    rows, misses = _two_runs(url)
    print(f"\n  the baseline among {total:,} processes")
    scale = _baseline_at_scale(url, total)
    flow_tracker.reset()
    lines = [
        f"Measured {machine_line()} (`python -m benchmarks compare{' --quick' if quick else ''}`), "
        f"PostgreSQL, {REPEATS} times each after a warm-up; server time (`Server-Timing`) for "
        "the API and the page, *served* by `flow-tracker serve` (a process of its own) or "
        "*mounted* in the benchmark's process; goal: the served API answers two runs of "
        f"5,000 flows in {GOAL_MS:.0f} ms or less (p95).",
        "",
        *rows,
        "",
        *scale,
    ]
    publish("compare", lines, readme="--readme" in argv)
    for miss in misses:
        print(f"  MISSED: {miss}")
    return 1 if misses else 0
