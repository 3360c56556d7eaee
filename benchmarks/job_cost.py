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
run says how many writes went in each.

``python -m benchmarks jobcost`` (a few seconds). Compare within a run.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import flow_tracker
from benchmarks.queues import fresh_pg_database
from flow_tracker import Status, runtime
from flow_tracker.integrations import jobs

JOBS = 1_000
THREADS = 4


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


def _job(busy: bool) -> Callable[[], None]:
    def run() -> None:
        tracker = jobs.start_job(
            job_system="celery",
            job_id=uuid.uuid4().hex,
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
    count = JOBS // 5 if "--quick" in argv else JOBS
    flow_tracker.configure(database_url=fresh_pg_database(), log_to_stdlib=False)
    try:
        print("\njob cost: one process, PostgreSQL, µs per job (compare within a run)\n")
        print(f"{'':44} {'wall':>7} {'this CPU':>9} {'PostgreSQL CPU':>15}")
        for label, work in (
            ("enqueue: queued row", _enqueue),
            ("trivial job: running row + final state", _job(busy=False)),
            ("busy job: + 10 flows and 10 logs", _job(busy=True)),
        ):
            wall, cpu, postgres = _measure(_one_thread(work), count)
            print(f"{label:44} {wall:7.0f} {cpu:9.0f} {postgres:15.0f}")
        # Threads of one worker writing at once share commits (flow_tracker.group_commit).
        group = runtime.writer().group
        groups, requests = group.groups, group.requests
        wall, cpu, postgres = _measure(_on_threads(_job(busy=False), THREADS), count)
        label = f"trivial job, {THREADS} threads at once"
        print(f"{label:44} {wall:7.0f} {cpu:9.0f} {postgres:15.0f}")
        commits = group.groups - groups
        print(
            f"\n  with {THREADS} threads: {(group.requests - requests) / max(commits, 1):.2f} "
            f"durable writes per commit ({commits:,} commits)"
        )
    finally:
        flow_tracker.reset()
    return 0
