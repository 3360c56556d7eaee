"""The floor of a durable start and end: PostgreSQL's cheapest two commits per job.

With ``FT_BENCH_FLOOR`` set to a PostgreSQL URL, a benchmark worker (tracking
off) writes one row before each job and one after it, each its own commit on a
kept connection (one per thread), prepared, ``synchronous_commit = off`` as flow-tracker's own
connections — into a table without an index. It is what the promise "the
running row before the job's code, the final state before the job is reported
done" costs before any tracker does anything else: the benchmark shows it beside
flow-tracker so the part of the loss that is the promise itself can be told
from the part that is flow-tracker's.
"""

from __future__ import annotations

import os
import threading

import psycopg

TABLE = "bench_floor_marks"
_INSERT = f"INSERT INTO {TABLE} (job_id, state) VALUES (%s, %s)"
_local = threading.local()  # a connection per thread: a thread pool's jobs do not queue on one


def create_table(database_url: str) -> None:
    """The marks' table: no primary key, no index (the cheapest insert there is)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (job_id text, state text)")


def mark(job_id: str, state: str) -> None:
    """One durable row (a commit the server has received) for ``job_id``."""
    conn = getattr(_local, "conn", None)
    if conn is None or _local.pid != os.getpid():  # and one per (forked) process
        conn = _local.conn = psycopg.connect(os.environ["FT_BENCH_FLOOR"], autocommit=True)
        conn.execute("SET synchronous_commit = off")
        _local.pid = os.getpid()
    conn.execute(_INSERT, (job_id, state), prepare=True)
