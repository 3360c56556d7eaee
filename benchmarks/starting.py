"""Starting runs from outside the code, at scale, on PostgreSQL.

``python -m benchmarks starting [--quick]``:

* a start through the API (``POST /api/workflows/{namespace}/{name}/runs`` to
  ``flow-tracker serve``, which imports no user code: it starts from the stored
  definition) against a start from code (``start_workflow`` in this process), in
  the same run, 200 each (50 with ``--quick``), interleaved in rounds. Both store
  the same rows (a 5-step workflow on Celery, not installed in either process,
  so its first step waits in the outbox: no broker in the measurement). Goal:
  API at most 2 times code, per start, wall time seen by the caller;
* the definitions page and ``/api/workflow-definitions`` at 1,000 definitions;
* the run list filtered by tag at 100,000 runs (10,000 with ``--quick``;
  1,000,000 step rows): a rare tag (100 runs carry it), a common one (half of
  them), and both, on the page and the API. Goal: served p95 ≤ 100 ms.

Server times are the ``Server-Timing`` of 40 requests after a warm-up. Writes
``benchmarks/results/starting.md``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
import psycopg

import flow_tracker
from benchmarks.readme import machine_line, publish
from benchmarks.workflow_pages import _bulk_runs, _served, _timed
from benchmarks.workflows import fresh_pg_database

STARTS = 200
DEFINITIONS = 1_000
RUNS = 100_000


def _declare() -> Any:
    wf = flow_tracker.workflow("bench_start", queue="celery", namespace="bench", version="1")
    wf.step(name="s0")(lambda context: 0)
    for k in range(1, 5):
        wf.step(name=f"s{k}", depends_on=[f"s{k - 1}"])(lambda context, _k=k, **parents: _k)
    return wf


def _start_costs(url: str, base: str, starts: int) -> tuple[list[float], list[float], list[float]]:
    """Per-start wall ms, interleaved in rounds of 10.

    From code here, through the served API, and through the API mounted in this
    process (no network, no second process).
    """
    from starlette.testclient import TestClient

    from flow_tracker.web import create_app

    code: list[float] = []
    api: list[float] = []
    mounted: list[float] = []
    body = {"context": {"cart": 1}, "tags": {"customer": "c-1"}}
    path = "/api/workflows/bench/bench_start/runs"
    app = create_app(url, keep_statistics=False)
    with httpx.Client(base_url=base, timeout=30) as client, TestClient(app) as local:
        for warm in range(5):
            flow_tracker.start_workflow("bench/bench_start", context={"cart": warm})
            client.post(path, json=body).raise_for_status()
            local.post(path, json=body).raise_for_status()
        for _round in range(starts // 10):
            for _ in range(10):
                began = time.perf_counter()
                flow_tracker.start_workflow(
                    "bench/bench_start", context={"cart": 1}, tags={"customer": "c-1"}
                )
                code.append((time.perf_counter() - began) * 1000)
            for target, times in ((client, api), (local, mounted)):
                for _ in range(10):
                    began = time.perf_counter()
                    answer = target.post(path, json=body)
                    times.append((time.perf_counter() - began) * 1000)
                    assert answer.status_code == 201, answer.text
    app.state.dashboard.store.dispose()
    return code, api, mounted


def _definitions(dsn: str, count: int) -> None:
    steps = [
        {"name": f"s{k}", "depends_on": [f"s{k - 1}"] if k else [], "retries": 2} for k in range(5)
    ]
    dag = psycopg.types.json.Jsonb({"name": "x", "queue": "celery", "steps": steps})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO flow_tracker_workflow_definitions
                (namespace, name, version, description, dag, queue, queue_name, module,
                 first_seen, last_seen)
            SELECT 'ns' || (g %% 20), 'workflow_' || (g / 3), (g %% 3 + 1)::text,
                   'a workflow of five steps', %s, 'celery', 'celery', 'app.flows',
                   now(), now()
            FROM generate_series(1, %s) g
            """,
            (dag, count),
        )


def _tags(dsn: str) -> None:
    """Tag every bulk run: ``customer`` c-0..c-999 (rare) and ``channel`` web|support (common)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO flow_tracker_workflow_run_tags (run_id, key, value, created_at)
            SELECT id, 'customer', 'c-' || (abs(hashtext(id::text)) % 1000), created_at
            FROM flow_tracker_workflow_runs WHERE name LIKE 'bulk_%'
            UNION ALL
            SELECT id, 'channel', CASE WHEN abs(hashtext(id::text || 'x')) % 2 = 0
                                       THEN 'web' ELSE 'support' END, created_at
            FROM flow_tracker_workflow_runs WHERE name LIKE 'bulk_%'
            """
        )
        conn.execute(
            """
            UPDATE flow_tracker_workflow_runs r SET tags = t.tags
            FROM (SELECT run_id, jsonb_object_agg(key, value) AS tags
                  FROM flow_tracker_workflow_run_tags GROUP BY run_id) t
            WHERE r.id = t.run_id
            """
        )
        conn.execute("ANALYZE")


def _row(what: str, times: tuple[float, float]) -> str:
    return f"| {what} | {times[0]:.1f} | {times[1]:.1f} |"


def main(args: list[str]) -> int:
    """Run the benchmark; print and write its tables."""
    quick = "--quick" in args
    starts, runs = (50, 10_000) if quick else (STARTS, RUNS)
    url = fresh_pg_database("flow_tracker_bench_starting")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    wf = _declare()
    from flow_tracker.workflows.definitions import ensure_recorded

    ensure_recorded(wf)
    lines = [f"### Starting runs from outside the code ({machine_line()}, PostgreSQL)", ""]
    with _served(url) as base:
        code, api, mounted = _start_costs(url, base, starts)
    code_ms, api_ms = statistics.median(code), statistics.median(api)
    mounted_ms = statistics.median(mounted)
    print(
        f"start from code: median {code_ms:.2f} ms; through the API: served {api_ms:.2f} ms, "
        f"mounted {mounted_ms:.2f} ms"
    )
    lines += [
        f"{starts} starts each, interleaved in rounds of 10 (wall time seen by the caller):",
        "",
        "| start | median ms | p95 ms |",
        "|---|---:|---:|",
        f"| from code (`start_workflow`) | {code_ms:.2f} | {_p95(code):.2f} |",
        f"| through the API (`flow-tracker serve`) | {api_ms:.2f} | {_p95(api):.2f} |",
        f"| through the API (mounted in this process) | {mounted_ms:.2f} | {_p95(mounted):.2f} |",
        "",
        f"API / code: served {api_ms / code_ms:.2f} times, mounted {mounted_ms / code_ms:.2f} "
        "times (goal: at most 2)",
        "",
    ]
    _definitions(dsn, DEFINITIONS)
    built = _bulk_runs(dsn, runs)
    _tags(dsn)
    print(f"stored {DEFINITIONS:,} definitions and {runs:,} tagged runs ({built:.0f} s)")
    pages = {
        f"definitions page ({DEFINITIONS:,} definitions)": "/workflows/definitions",
        "`/api/workflow-definitions`": "/api/workflow-definitions",
        "run list, rare tag (customer:c-42)": "/workflows?tag=customer:c-42",
        "run list, common tag (channel:support)": "/workflows?tag=channel:support",
        "`/api/workflows?tag=customer:c-42`": "/api/workflows?tag=customer:c-42",
        "`/api/workflows?tag=channel:web&tag=customer:c-7`": (
            "/api/workflows?tag=channel:web&tag=customer:c-7"
        ),
        "run list, no filter (for comparison)": "/workflows",
    }
    lines += [
        f"Served pages, {runs:,} runs ({runs * 10:,} step rows), server time of 40 requests:",
        "",
        "| page | p50 ms | p95 ms |",
        "|---|---:|---:|",
    ]
    with _served(url) as base, httpx.Client(base_url=base, timeout=30) as client:
        for what, path in pages.items():
            times = _timed(client, path)
            print(f"  {what}: p50 {times[0]:.1f} ms, p95 {times[1]:.1f} ms")
            lines.append(_row(what, times))
    lines.append("")
    publish("starting", lines, readme=False)
    flow_tracker.reset()
    return 0


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
