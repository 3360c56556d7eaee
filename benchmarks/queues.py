"""Jobs/s through real workers with tracking on vs off, per queue, in one run.

For each queue (Celery prefork, RQ's forking Worker and SimpleWorker, Dramatiq)
and each job (trivial; 10 flows + 10 logs): start a real worker process, wait
until it has run a first job, pause it (SIGSTOP) while N jobs are enqueued,
resume it and time from the first to the last job bumping a Redis counter.

Three runs each: tracking off (``FLOW_TRACKER_ENABLED=false``); on, as by
default, where a job is reported done only once its final state is stored; and
on with ``completion_timeout=0`` (the final state follows within the flush
interval). Tracking writes to PostgreSQL. Also printed: the cost of an enqueue
in the sending process (the queued row is stored before the message goes out).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from redis import Redis

import flow_tracker
from benchmarks.apps import work

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/10"
PG_SERVER = os.environ.get("FLOW_TRACKER_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BIN = Path(sys.executable).parent


@dataclass
class Queue:
    """How to run one queue's worker and send it jobs."""

    name: str
    worker: list[str]
    send: Callable[[str], None]
    jobs: int


def _celery_send(kind: str) -> None:
    from benchmarks.apps import celery_bench

    getattr(celery_bench, kind).delay()


def _rq_send(kind: str) -> None:
    from rq import Queue as RqQueue

    from benchmarks.apps import rq_settings  # noqa: F401 - installs tracking on this side too

    RqQueue("ft-bench", connection=Redis.from_url(REDIS_URL)).enqueue(getattr(work, kind))


def _dramatiq_send(kind: str) -> None:
    from benchmarks.apps import dramatiq_bench

    getattr(dramatiq_bench, kind).send()


def _rq_worker(worker_class: str) -> list[str]:
    return [
        str(BIN / "rq"),
        "worker",
        "-c",
        "benchmarks.apps.rq_settings",
        "--url",
        REDIS_URL,
        "-w",
        worker_class,
        "--logging_level",
        "ERROR",
        "ft-bench",
    ]


QUEUES = [
    Queue(
        "Celery prefork (2)",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.apps.celery_bench",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-l",
            "error",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        _celery_send,
        1000,
    ),
    Queue("RQ SimpleWorker", _rq_worker("rq.worker.SimpleWorker"), _rq_send, 1000),
    Queue("RQ Worker (fork per job)", _rq_worker("rq.worker.Worker"), _rq_send, 300),
    Queue(
        "Dramatiq (2 procs x 2 threads)",
        [
            str(BIN / "dramatiq"),
            "benchmarks.apps.dramatiq_bench",
            "-p",
            "2",
            "-t",
            "2",
            "-Q",
            "ft-bench",
        ],
        _dramatiq_send,
        1000,
    ),
]


def _wait_for(redis: Redis, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while int(redis.get(work.COUNTER) or 0) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {int(redis.get(work.COUNTER) or 0)} of {count} jobs done")
        time.sleep(0.005)


def run_one(
    queue: Queue, kind: str, enabled: bool, database_url: str, wait: bool = True
) -> tuple[float, float]:
    """Jobs/s through the worker, and the µs an enqueue took in this process."""
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "FT_BENCH_REDIS": REDIS_URL,
        "FLOW_TRACKER_DATABASE_URL": database_url,
        "FLOW_TRACKER_ENABLED": "true" if enabled else "false",
        "FLOW_TRACKER_LOG_TO_STDLIB": "false",
        "FLOW_TRACKER_COMPLETION_TIMEOUT": "5" if wait else "0",
    }
    flow_tracker.configure(database_url=database_url, enabled=enabled, log_to_stdlib=False)
    proc = subprocess.Popen(
        queue.worker,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        queue.send(kind)  # a first job: the worker is up and warm once it is done
        _wait_for(redis, 1, 60)
        os.killpg(proc.pid, signal.SIGSTOP)  # hold the worker while the jobs are sent
        started = time.perf_counter()
        for _ in range(queue.jobs):
            queue.send(kind)
        enqueue_us = (time.perf_counter() - started) / queue.jobs * 1e6
        redis.set(work.COUNTER, 0)
        os.killpg(proc.pid, signal.SIGCONT)
        _wait_for(redis, 1, 60)
        started = time.perf_counter()  # from the first job done to the last
        _wait_for(redis, queue.jobs, 600)
        elapsed = time.perf_counter() - started
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        flow_tracker.reset()
    return (queue.jobs - 1) / elapsed, enqueue_us


def fresh_pg_database() -> str:
    """URL of a new, empty PostgreSQL database for this run."""
    name = "flow_tracker_bench_queues"
    with psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"


def main(argv: list[str]) -> int:
    """Run the queue benchmark; exit 1 when the trivial-job targets are missed."""
    quick = "--quick" in argv
    database_url = fresh_pg_database()
    print(
        f"\nqueue benchmark ({'quick' if quick else 'full'}): jobs/s through real workers, "
        "tracking to PostgreSQL\n"
    )
    print(
        f"{'':32} {'job':8} {'off j/s':>8} {'on j/s':>8} {'cost/job':>9} {'loss':>6}   "
        f"{'no-wait j/s':>11} {'cost/job':>9} {'loss':>6}   {'enqueue off/on µs':>17}"
    )
    misses: list[str] = []
    results: dict[str, Any] = {}
    for queue in QUEUES:
        if quick:
            queue.jobs = max(100, queue.jobs // 5)
        for kind in ("trivial", "busy"):
            off, enq_off = run_one(queue, kind, False, database_url)
            on, enq_on = run_one(queue, kind, True, database_url)
            no_wait, _ = run_one(queue, kind, True, database_url, wait=False)
            cost_ms = (1 / on - 1 / off) * 1000
            loss = 1 - on / off
            nw_cost_ms = (1 / no_wait - 1 / off) * 1000
            nw_loss = 1 - no_wait / off
            results[f"{queue.name}/{kind}"] = (off, on, no_wait)
            label = "trivial" if kind == "trivial" else "10f+10l"
            print(
                f"{queue.name:32} {label:8} {off:8.0f} {on:8.0f} {cost_ms:7.2f}ms {loss:6.1%}   "
                f"{no_wait:11.0f} {nw_cost_ms:7.2f}ms {nw_loss:6.1%}   "
                f"{enq_off:7.0f} /{enq_on:7.0f}"
            )
            if kind == "trivial" and (cost_ms > 1.0 or loss > 0.10):
                misses.append(f"{queue.name}: {cost_ms:.2f} ms/job, {loss:.1%} of throughput")
    print(
        "\ntargets (trivial job, default settings): tracking costs ≤ 1 ms per job and "
        "≤ 10% of throughput"
    )
    for line in misses:
        print(f"  MISS  {line}")
    if not misses:
        print("  PASS  every queue")
    return 1 if misses else 0
