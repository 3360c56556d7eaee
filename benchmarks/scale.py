"""Past one table: many hosts writing at once, and retention by dropping partitions.

``python -m benchmarks scale [--quick] [--readme]``, on PostgreSQL (partitioned tables):

* **fleet**: 4 writer processes x 4 threads (standing in for worker hosts) record
  steps (a flow with one log line: two rows, as in the core benchmark), each
  thread in a tracked process of its own, for 60 s (15 s with ``--quick``),
  while PostgreSQL is restarted in the middle. First one process's ``COPY`` of
  the same log rows is measured; then the fleet runs unpaced for
  :data:`CAPACITY_S` without a restart, which finds the most it stores (its
  threads make rows faster than that, so its buffers overflow and drop rows, by
  design: recording never blocks a job); then, on a fresh database, the fleet is
  offered :data:`LOAD` of the ``COPY`` rate (steps paced by each thread) with
  the restart. Reported: the rows stored per second by all of them (goal ≥ 60 %
  of one process's ``COPY``), the most connections the writers held at once (sampled
  from ``pg_stat_activity``; goal: at most one per process) and the rows lost
  (goal 0).
* **retention**: 30 daily partitions of 1,000,000 log rows (100,000 with
  ``--quick``), written by SQL in the server, with the processes they belong to;
  then ``cleanup(days=7)``: its time (goal ≤ 2 s) and the rows it deleted one by
  one (``n_tup_del`` of the log partitions in ``pg_stat_user_tables``; goal: at
  most one partition's worth), the rest gone with their partitions.

Restarting PostgreSQL needs ``pg_ctlcluster`` (as on Debian) and the rights to
use it; without them the fleet runs without the restart, and says so. Every run
writes ``benchmarks/results/scale.md``; ``--readme`` also replaces docs/operations.md's
``<!-- benchmark:scale -->`` section.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

import flow_tracker
from benchmarks.readme import ROOT, machine_line, publish
from benchmarks.workflows import fresh_pg_database
from flow_tracker import ids
from flow_tracker.store import migrate, partitions
from flow_tracker.store.engine import Store

WRITERS = 4
THREADS = 4
PARTITIONS = 30
BUFFER = 400_000
LOAD = 0.65  # of one process's COPY rate, offered by the fleet
CAPACITY_S = 15.0  # the unpaced run, which finds the most the fleet stores


def _driver_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _copy_rate(url: str, seconds: float) -> float:
    """Log rows per second one process stores by ``COPY`` (rows made in Python, as ours are)."""
    pid = uuid.uuid4()
    rows = 0
    with psycopg.connect(_driver_url(url), autocommit=True) as conn:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            with (
                conn.transaction(),
                conn.cursor().copy(
                    "COPY flow_tracker_log_entries"
                    " (id, process_id, flow_id, level, message, data, created_at, position)"
                    " FROM STDIN"
                ) as copy,
            ):
                now = datetime.now(timezone.utc)
                for k in range(5_000):
                    copy.write_row(
                        (
                            ids.new_id(),
                            pid,
                            None,
                            "info",
                            f"row {k % 3} of step {k % 3}",
                            Jsonb({"n": k % 3}),
                            now,
                            rows + k,
                        )
                    )
            rows += 5_000
        elapsed = time.perf_counter() - started
        conn.execute("DELETE FROM flow_tracker_log_entries WHERE process_id = %s", (pid,))
    return rows / elapsed


def _restart_command() -> list[str] | None:
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


def _sample_connections(url: str, stop: threading.Event, seen: list[int]) -> None:
    """The most flow-tracker connections to the database at once, sampled every 0.2 s."""
    dbname = _driver_url(url).rsplit("/", 1)[1]
    while not stop.wait(0.2):
        try:
            with psycopg.connect(_driver_url(url), autocommit=True, connect_timeout=2) as conn:
                count = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = %s AND application_name = 'flow-tracker'",
                    (dbname,),
                ).fetchall()[0][0]
            seen.append(int(count))
        except psycopg.Error:
            continue  # the server is restarting


def _server_cpu() -> float:
    """CPU seconds used so far by every PostgreSQL server process (0 when not readable).

    A restart starts new processes: what the old ones used is lost, so this
    undercounts a run with a restart a little.
    """
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def fleet(
    url: str, seconds: float, steps_per_thread: float, *, restart_halfway: bool = True
) -> dict[str, Any]:
    """Run the writers (with a restart in the middle); return what was stored and lost.

    ``steps_per_thread`` is each thread's pace in steps a second; 0 runs unpaced.
    """
    folder = Path(tempfile.mkdtemp(prefix="ft-fleet-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FLOW_TRACKER_DATABASE_URL": url,
        "FLOW_TRACKER_BUFFER_SIZE": str(BUFFER),
    }
    restart = _restart_command() if restart_halfway else None
    seen: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_connections, args=(url, stop, seen), daemon=True)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.apps.fleet_writer",
                str(THREADS),
                str(seconds),
                f"{steps_per_thread:.1f}",
                str(folder / f"w{i}.json"),
            ],
            env=env,
            cwd=ROOT,
        )
        for i in range(WRITERS)
    ]
    sampler.start()
    server_cpu = -_server_cpu()
    restarted = None
    time.sleep(seconds / 2)
    if restart is not None:
        server_cpu += _server_cpu()  # the old server processes' share, before they go
        began = time.perf_counter()
        done = subprocess.run(restart, capture_output=True, text=True)
        if done.returncode == 0:
            restarted = time.perf_counter() - began
        else:
            print(f"  (no restart: {done.stderr.strip()[:200]})")
        server_cpu -= _server_cpu()
    writers_cpu = 0.0
    for proc in procs:
        _pid, _status, usage = os.wait4(proc.pid, 0)
        writers_cpu += usage.ru_utime + usage.ru_stime
        proc.returncode = 0
    server_cpu += _server_cpu()
    stop.set()
    sampler.join()
    reports = [json.loads((folder / f"w{i}.json").read_text()) for i in range(WRITERS)]
    with psycopg.connect(_driver_url(url), autocommit=True) as conn:
        stored = {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            for table in (
                "flow_tracker_processes",
                "flow_tracker_flows",
                "flow_tracker_log_entries",
            )
        }
    # From the first step to the last row stored: the time up, then each writer's flush.
    window = seconds + max(float(r["flush_s"]) for r in reports)
    return {
        "window": window,
        "tail": window - seconds,
        "made": sum(r["rows"] for r in reports),
        "stored": sum(stored.values()),
        "by_table": stored,
        "dropped": sum(int(r["writer"].get("dropped", 0)) for r in reports),
        "max_connections": max(seen, default=0),
        "restart_s": restarted,
        "steps": sum(r["steps"] for r in reports),
        "writers_cpu": writers_cpu / window,
        "server_cpu": server_cpu / window,
    }


def _fill(url: str, now: datetime, rows_per_day: int) -> float:
    """30 days of processes (1,000 a day) and their log rows, by SQL in the server."""
    per_process = rows_per_day // 1_000
    started = time.perf_counter()
    with psycopg.connect(_driver_url(url), autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for day in range(PARTITIONS):
            base = now - timedelta(days=day)
            conn.execute(
                """
                INSERT INTO flow_tracker_processes
                    (id, name, category, status, created_at, started_at, finished_at,
                     updated_at, duration_ms, attempt)
                SELECT md5(%(day)s || '-' || p)::uuid, 'Nightly', 'jobs', 'completed',
                       %(base)s - make_interval(secs => p * 60),
                       %(base)s - make_interval(secs => p * 60),
                       %(base)s - make_interval(secs => p * 60 - 30), %(base)s, 30000, 1
                FROM generate_series(1, 1000) p
                """,
                {"day": day, "base": base},
            )
            # A UUIDv7 per row made at its own moment within the day (as a host would).
            conn.execute(
                """
                INSERT INTO flow_tracker_log_entries
                    (id, process_id, level, message, data, created_at, position)
                SELECT (lpad(to_hex(floor(extract(epoch FROM t) * 1000)::bigint), 12, '0')
                        || '7' || substr(md5(g::text || %(day)s), 1, 3)
                        || '8' || substr(md5(g::text || 'x' || %(day)s), 1, 15))::uuid,
                       md5(%(day)s || '-' || (1 + g %% 1000))::uuid, 'info',
                       'imported a batch of rows', '{"rows": 500}'::jsonb, t, g
                FROM (SELECT g, %(base)s - make_interval(secs => (g %% 1000) * 60 + 1)
                             - make_interval(secs => (g / 1000) * 0.01) AS t
                      FROM generate_series(0, %(n)s - 1) g) s
                """,
                {"day": day, "base": base, "n": per_process * 1_000},
            )
        conn.execute("ANALYZE")
    return time.perf_counter() - started


def retention(url: str, rows_per_day: int) -> dict[str, Any]:
    """Fill 30 daily partitions, then time ``cleanup(days=7)``."""
    store = Store(url)
    migrate.upgrade(store.engine, "0006")
    now = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
    with psycopg.connect(_driver_url(url)) as conn, conn.transaction():
        for table in partitions.TABLES:
            partitions.partition_table(conn, table, 24, now - timedelta(days=PARTITIONS + 1))
    migrate.upgrade(store.engine)
    store.keep_partitions(force=True)
    store.dispose()
    seconds = _fill(url, now, rows_per_day)
    with psycopg.connect(_driver_url(url), autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM flow_tracker_log_entries").fetchall()[0][0]
        holding = [p for p in partitions.partitions(conn, "flow_tracker_log_entries") if p.rows > 0]
        conn.execute("SELECT pg_stat_reset()")
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    started = time.perf_counter()
    deleted_processes = flow_tracker.cleanup(days=7)
    took = time.perf_counter() - started
    flow_tracker.reset()  # its connections close, and flush their statistics
    time.sleep(1.5)
    with psycopg.connect(_driver_url(url), autocommit=True) as conn:
        after = conn.execute("SELECT count(*) FROM flow_tracker_log_entries").fetchall()[0][0]
        one_by_one = conn.execute(
            "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables"
            " WHERE relname LIKE 'flow_tracker_log_entries%'"
        ).fetchall()[0][0]
        left = len(partitions.partitions(conn, "flow_tracker_log_entries"))
    return {
        "fill_s": seconds,
        "before": before,
        "after": after,
        "partitions_with_rows": len(holding),
        "partitions_left": left,
        "seconds": took,
        "n_tup_del": int(one_by_one),
        "processes": deleted_processes,
    }


def main(argv: list[str]) -> int:
    """Run both parts; exit 1 when a goal is missed."""
    warnings.simplefilter("ignore")
    quick = "--quick" in argv
    seconds = 15.0 if quick else 60.0
    rows_per_day = 100_000 if quick else 1_000_000
    print(f"\nscale ({'quick' if quick else 'full'}), PostgreSQL\n")
    misses: list[str] = []

    parts = [a.split("=", 1)[1] for a in argv if a.startswith("--part=")] or ["fleet", "retention"]
    lines = [
        f"Measured {machine_line()} (`python -m benchmarks scale{' --quick' if quick else ''}`), "
        "PostgreSQL 15 on the same machine, its tables partitioned by day.",
    ]
    if "fleet" in parts:
        lines += _fleet_part(seconds, misses)
    if "retention" in parts:
        lines += _retention_part(rows_per_day, misses)
    publish("scale", lines, readme="--readme" in argv)
    for miss in misses:
        print(f"  MISSED: {miss}")
    return 1 if misses else 0


def _fleet_part(seconds: float, misses: list[str]) -> list[str]:
    url = fresh_pg_database("flow_tracker_bench_fleet")
    setup = Store(url)
    setup.ensure_schema()
    setup.dispose()  # its connection would count as a writer's below
    copy_rate = _copy_rate(url, 10.0)
    print(f"  one process's COPY of log rows: {copy_rate:,.0f} rows/s")
    # First unpaced, without a restart: the most the fleet stores. Its threads make
    # rows faster than any writer stores them, so the buffers overflow and drop rows,
    # by design (recording never blocks a job); the paced run below loses none.
    most = fleet(url, CAPACITY_S, 0, restart_halfway=False)
    capacity = most["stored"] / most["window"]
    print(
        f"  fleet {WRITERS} x {THREADS} unpaced, {CAPACITY_S:.0f} s: {capacity:,.0f} rows/s stored "
        f"({capacity / copy_rate:.0%} of COPY), {most['dropped']:,} dropped past the buffers"
    )
    url = fresh_pg_database("flow_tracker_bench_fleet")
    setup = Store(url)
    setup.ensure_schema()
    setup.dispose()
    offered = LOAD * copy_rate
    run = fleet(url, seconds, offered / 2 / (WRITERS * THREADS))
    rate = run["stored"] / run["window"]
    lost = run["made"] - run["stored"]
    share = rate / copy_rate
    restart = f"{run['restart_s']:.1f} s" if run["restart_s"] is not None else "not restarted"
    print(
        f"  fleet {WRITERS} x {THREADS}, offered {offered:,.0f} rows/s ({LOAD:.0%} of COPY): "
        f"{run['steps']:,} steps, {run['stored']:,} rows stored of {run['made']:,} made in "
        f"{run['window']:.0f} s (the last {run['tail']:.1f} s storing what was buffered): "
        f"{rate:,.0f} rows/s ({share:.0%} of COPY); PostgreSQL restart {restart}; "
        f"most connections at once {run['max_connections']}; lost {lost}, dropped "
        f"{run['dropped']}; CPU cores used: writers {run['writers_cpu']:.2f}, "
        f"PostgreSQL {run['server_cpu']:.2f}"
    )
    if share < 0.6:
        misses.append(f"fleet {share:.0%} of one process's COPY (goal ≥ 60 %)")
    if lost or run["dropped"]:
        misses.append(f"fleet lost {lost} rows, dropped {run['dropped']}")
    if run["max_connections"] > WRITERS:
        misses.append(f"{run['max_connections']} connections for {WRITERS} processes")

    return [
        "",
        f"| {WRITERS} writer processes x {THREADS} threads, {seconds:.0f} s, "
        "PostgreSQL restarted halfway | |",
        "|---|---:|",
        f"| one process's `COPY` of log rows (the floor, same run) | {copy_rate:,.0f} rows/s |",
        f"| the most the fleet stores (unpaced, {CAPACITY_S:.0f} s, no restart; "
        f"rows past the buffers dropped) | {capacity:,.0f} rows/s ({capacity / copy_rate:.0%}) |",
        f"| offered to the fleet ({LOAD:.0%} of `COPY`, paced by each thread) "
        f"| {offered:,.0f} rows/s |",
        f"| the fleet, rows stored (processes, flows, logs) | {rate:,.0f} rows/s |",
        f"| fleet ÷ one process's `COPY` (goal ≥ 60 %) | {share:.0%} |",
        f"| PostgreSQL restart | {restart} |",
        f"| rows made / stored / lost | {run['made']:,} / {run['stored']:,} / {lost:,} |",
        f"| most connections at once, all {WRITERS} processes | {run['max_connections']} |",
        f"| CPU used, of the machine's {os.cpu_count()} cores: writer processes / PostgreSQL "
        f"| {run['writers_cpu']:.2f} / {run['server_cpu']:.2f} |",
        f"| `buffer_size` of each writer | {BUFFER:,} |",
    ]


def _retention_part(rows_per_day: int, misses: list[str]) -> list[str]:
    url = fresh_pg_database("flow_tracker_bench_retention")
    kept = retention(url, rows_per_day)
    print(
        f"  retention: {kept['before']:,} log rows in {kept['partitions_with_rows']} daily "
        f"partitions (written in {kept['fill_s']:.0f} s); cleanup(days=7) took "
        f"{kept['seconds']:.2f} s, deleted {kept['n_tup_del']:,} log rows one by one, "
        f"{kept['processes']:,} processes; {kept['after']:,} log rows left"
    )
    if kept["seconds"] > 2:
        misses.append(f"cleanup(days=7) took {kept['seconds']:.1f} s (goal ≤ 2 s)")
    if kept["n_tup_del"] > rows_per_day:
        misses.append(f"cleanup deleted {kept['n_tup_del']:,} rows one by one (goal ≤ one day's)")
    return [
        "",
        f"| retention: {PARTITIONS} daily partitions of {rows_per_day:,} log rows | |",
        "|---|---:|",
        f"| `cleanup(days=7)` (goal ≤ 2 s) | {kept['seconds']:.2f} s |",
        f"| log rows deleted one by one (`n_tup_del`; goal ≤ {rows_per_day:,}) "
        f"| {kept['n_tup_del']:,} |",
        f"| log rows before / after | {kept['before']:,} / {kept['after']:,} |",
        f"| processes deleted | {kept['processes']:,} |",
    ]
