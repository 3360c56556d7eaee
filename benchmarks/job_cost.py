"""Where a tracked job's cost goes: wall time, this process's CPU and PostgreSQL's CPU.

In one process, without a queue: a job's durable writes as a worker makes them
(``start_job``: the running row; ``finish_job``: the final state) and, for the
busy job, 10 flows with a log entry each in between; also the queued row as
the enqueuing side writes it (``record_enqueued``). PostgreSQL's CPU is read
from ``/proc`` for every server process (Linux only; 0 elsewhere), so on a
machine that runs the workers and the database together this says how much of
a job's throughput loss is the database's own work and how much is Python's.
Last, the trivial job on four threads at once, as a threaded worker runs them:
their durable writes share commits (:mod:`flow_tracker.group_commit`), and the
run says how many writes went in each. First of all, the floor: two commits
per job on a kept, prepared connection into a table without an index
(:mod:`benchmarks.apps.floor`) — what the durable start and end cost before
any tracker does anything else.

``--schemas`` adds the database's share of a job queued beforehand (its
running row then updates the queued one, as in a real worker) under schema
variants, each on a fresh database: as shipped; without the ``metadata`` GIN
index; without the name's trigram index (both GIN: several entries per row);
without the five indexes a status change touches, so that the updates can be
HOT (heap-only: no index entry written; the run says what share of them were);
that without the history rows too; and no index on the process table but its
primary key (the history table keeps its own): about what the process table's
indexes cost together. They are not options
of flow-tracker — the dashboard's filters, the reaper and the timeline need
what they remove — but what each would save is what a different storage of
the job's start and end could hope for.

``python -m benchmarks jobcost [--schemas] [--readme]`` (a minute or two; the
table goes to ``benchmarks/results/jobcost.md``, with ``--readme`` also into
docs/benchmarks.md). Compare within a run.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

import flow_tracker
from benchmarks.apps import floor
from benchmarks.queues import fresh_pg_database
from benchmarks.readme import machine_line, publish
from flow_tracker import Status, jobs, runtime

JOBS = 1_000
THREADS = 4
SCHEMA_ROUNDS = 3


def _postgres_cpu_s() -> float:
    """CPU seconds used so far by every PostgreSQL server process."""
    total = 0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if not (entry / "comm").read_text().startswith("postgres"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


def _enqueue() -> None:
    jobs.record_enqueued(
        job_system="celery", job_id=uuid.uuid4().hex, name="bench.trivial", queue="celery"
    )


def _job(busy: bool, job_ids: Iterator[str] | None = None) -> Callable[[], None]:
    """A job as a worker runs it; ``job_ids``: those of jobs queued beforehand, in turn."""

    def run() -> None:
        tracker = jobs.start_job(
            job_system="celery",
            job_id=uuid.uuid4().hex if job_ids is None else next(job_ids),
            name="bench.job",
            queue="celery",
            attempt=1,
        )
        if busy:
            for step in range(10):
                with flow_tracker.flow(f"step {step}") as flow:
                    flow.info("processed", data={"step": step})
        jobs.finish_job(tracker, Status.COMPLETED)

    return run


def _floor_job() -> None:
    job_id = uuid.uuid4().hex
    floor.mark(job_id, "running")
    floor.mark(job_id, "completed")


# Schema variants of --schemas: SQL run on the fresh database after its migrations.
# A status change can be a HOT update (no index entry written) only when no index
# covers a column it changes - in its key, expression or predicate: the running
# row and the final state change status, started_at, finished_at, heartbeat_at,
# updated_at, metadata and the error columns.
_METADATA_INDEX = "ix_flow_tracker_processes_metadata"
_STATUS_INDEXES = (
    _METADATA_INDEX,
    "ix_flow_tracker_processes_status_created",
    "ix_flow_tracker_processes_heartbeat",
    "ix_flow_tracker_processes_finished",
    "ix_flow_tracker_processes_completed_name_started",  # its predicate reads status
)
_HOT = [f"DROP INDEX {name}" for name in _STATUS_INDEXES] + [
    "ALTER TABLE flow_tracker_processes SET (fillfactor = 70)"
]
_NO_HISTORY = [
    "CREATE FUNCTION bench_drop_row() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'",
    "CREATE TRIGGER bench_no_history BEFORE INSERT ON flow_tracker_transitions "
    "FOR EACH ROW EXECUTE FUNCTION bench_drop_row()",
]
_KEY_ONLY = [
    "DO $$DECLARE r record; BEGIN FOR r IN SELECT indexname FROM pg_indexes "
    "WHERE tablename = 'flow_tracker_processes' AND indexname <> 'flow_tracker_processes_pkey' "
    "LOOP EXECUTE 'DROP INDEX ' || quote_ident(r.indexname); END LOOP; END$$"
]
SCHEMAS: dict[str, list[str]] = {
    "as shipped": [],
    "without the metadata GIN index": [f"DROP INDEX {_METADATA_INDEX}"],
    "without the name trigram index": ["DROP INDEX ix_flow_tracker_processes_name_trgm"],
    "HOT: without 5 status-touched indexes": _HOT,
    "HOT and without the history rows": _HOT + _NO_HISTORY,
    "no index but the primary key": _KEY_ONLY,
}
_HOT_SHARE = (
    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
    "WHERE relname = 'flow_tracker_processes'"
)


def _schemas(count: int, rounds: int) -> list[str]:
    """Run the queued job under each schema variant; its rows of the published table.

    Each variant has a database of its own, set up first; then the variants take
    turns, ``rounds`` times, and each row is the median of its rounds (a machine
    that slows down for a while does not land on one variant).
    """
    rows = [
        "| a queued job run, schema | wall µs | this CPU µs | PostgreSQL CPU µs | HOT updates |",
        "|---|---:|---:|---:|---:|",
    ]
    databases: dict[str, str] = {}
    queued: dict[str, Iterator[str]] = {}
    for number, (label, statements) in enumerate(SCHEMAS.items()):
        database_url = fresh_pg_database(f"flow_tracker_bench_schema_{number}")
        databases[label] = database_url
        flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
        try:
            # A first write makes the schema (its migrations) before it is altered.
            jobs.record_enqueued(job_system="celery", job_id="warm", name="w", queue="celery")
            with psycopg.connect(database_url, autocommit=True) as conn:
                for statement in statements:
                    conn.execute(statement)
            job_ids = [uuid.uuid4().hex for _ in range((count + 50 * THREADS) * rounds)]
            for job_id in job_ids:
                jobs.record_enqueued(
                    job_system="celery", job_id=job_id, name="bench.job", queue="celery"
                )
            queued[label] = iter(job_ids)
        finally:
            flow_tracker.reset()
    measured: dict[str, list[tuple[float, float, float]]] = {label: [] for label in SCHEMAS}
    for _ in range(rounds):
        for label, database_url in databases.items():
            flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
            try:
                run = _one_thread(_job(busy=False, job_ids=queued[label]))
                measured[label].append(_measure(run, count))
            finally:
                flow_tracker.reset()
    print(
        f"\n  a queued job run, by schema: {'wall':>7} {'this CPU':>9} {'PostgreSQL CPU':>15}"
        f" {'HOT updates':>12}"
    )
    for label, database_url in databases.items():
        columns = zip(*measured[label], strict=True)
        wall, cpu, postgres = (statistics.median(part) for part in columns)
        hot = _hot_share(database_url)
        print(f"  {label:42} {wall:7.0f} {cpu:9.0f} {postgres:15.0f} {hot:>12}")
        rows.append(f"| {label} | {wall:,.0f} | {cpu:,.0f} | {postgres:,.0f} | {hot} |")
    return rows


def _hot_share(database_url: str) -> str:
    """The share of the process table's updates PostgreSQL made HOT, as counted so far."""
    time.sleep(0.6)  # the statistics collector's counts lag the writes by up to 500 ms
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(_HOT_SHARE).fetchone()
    if row is None or not row[0]:
        return "-"
    return f"{row[1] / row[0]:.0%}"


def _one_thread(work: Callable[[], None]) -> Callable[[int], None]:
    """``count`` runs of ``work``, one after another."""

    def run(count: int) -> None:
        for _ in range(count):
            work()

    return run


def _on_threads(work: Callable[[], None], threads: int) -> Callable[[int], None]:
    """``count`` runs of ``work`` shared by ``threads`` threads started at once."""

    def run(count: int) -> None:
        workers = [
            threading.Thread(target=_one_thread(work), args=(count // threads,))
            for _ in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    return run


def _measure(run: Callable[[int], None], count: int) -> tuple[float, float, float]:
    run(50 * THREADS)  # warm: connections, statements
    postgres, cpu, wall = _postgres_cpu_s(), time.process_time(), time.perf_counter()
    run(count)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    postgres = _postgres_cpu_s() - postgres
    return wall / count * 1e6, cpu / count * 1e6, postgres / count * 1e6


def main(argv: list[str]) -> int:
    """Print where a tracked job's time goes; always exits 0 (no target here)."""
    quick = "--quick" in argv
    count = JOBS // 5 if quick else JOBS
    rows = [
        "| one process, PostgreSQL | wall µs | this CPU µs | PostgreSQL CPU µs |",
        "|---|---:|---:|---:|",
    ]
    database_url = fresh_pg_database()
    floor.create_table(database_url)
    os.environ["FT_BENCH_FLOOR"] = database_url
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False)
    try:
        print("\njob cost: one process, PostgreSQL, µs per job (compare within a run)\n")
        print(f"{'':44} {'wall':>7} {'this CPU':>9} {'PostgreSQL CPU':>15}")
        for label, work in (
            ("floor: 2 commits, no tracker", _floor_job),
            ("enqueue: queued row", _enqueue),
            ("trivial job: running row + final state", _job(busy=False)),
            ("busy job: + 10 flows and 10 logs", _job(busy=True)),
        ):
            wall, cpu, postgres = _measure(_one_thread(work), count)
            print(f"{label:44} {wall:7.0f} {cpu:9.0f} {postgres:15.0f}")
            rows.append(f"| {label} | {wall:,.0f} | {cpu:,.0f} | {postgres:,.0f} |")
        # Threads of one worker writing at once share commits (flow_tracker.group_commit).
        group = runtime.writer().group
        groups, requests = group.groups, group.requests
        wall, cpu, postgres = _measure(_on_threads(_job(busy=False), THREADS), count)
        label = f"trivial job, {THREADS} threads at once"
        print(f"{label:44} {wall:7.0f} {cpu:9.0f} {postgres:15.0f}")
        rows.append(f"| {label} | {wall:,.0f} | {cpu:,.0f} | {postgres:,.0f} |")
        commits = group.groups - groups
        shared = (
            f"With {THREADS} threads, {(group.requests - requests) / max(commits, 1):.2f} "
            f"durable writes shared each commit ({commits:,} commits)."
        )
        print(f"\n  {shared}")
    finally:
        flow_tracker.reset()
    lines = [
        f"Measured by `python -m benchmarks jobcost{' --quick' if quick else ''}"
        f"{' --schemas' if '--schemas' in argv else ''}` on {machine_line()}; "
        f"{count:,} jobs per row, µs per job.",
        "",
        *rows,
        "",
        shared,
    ]
    if "--schemas" in argv:
        lines += ["", *_schemas(count, 1 if quick else SCHEMA_ROUNDS)]
    publish("jobcost", lines, readme="--readme" in argv)
    return 0
