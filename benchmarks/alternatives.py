"""What Celery's own ways of knowing what a task did cost, beside flow-tracker's, in one run.

``python -m benchmarks alternatives [--quick] [--readme]``: the trivial job through
a real Celery worker (prefork, 2 processes; threads, 4), jobs/s as in the queue
benchmark (:mod:`benchmarks.queues`), the settings taking turns, best of 3 runs:

* **off**: no tracking, no result backend, no events;
* **flow-tracker**: its defaults, tracking to PostgreSQL (the running row stored
  before the task, the final state before the task is reported done);
* **Celery's database result backend** on the same PostgreSQL with
  ``task_track_started=True``: the state in SQL that Celery itself keeps (STARTED
  stored before the task, SUCCESS after), the nearest thing to what flow-tracker
  records — without flows, logs, lost-job detection or a dashboard;
* **Celery task events** (``worker_send_task_events``): what Flower reads; the
  worker publishes them to the broker and nothing keeps them unless a monitor
  listens (none does here);
* **the floor**: no tracker, only the durability flow-tracker's defaults
  promise, at its cheapest — one row inserted and committed before each task
  and one after, into a table without an index on the same PostgreSQL
  (:mod:`benchmarks.apps.floor`). What is left of flow-tracker's loss beyond
  this one is flow-tracker's own work.

Every run writes ``benchmarks/results/alternatives.md``; ``--readme`` also replaces
docs/benchmarks.md's ``<!-- benchmark:alternatives -->`` section.
"""

from __future__ import annotations

from benchmarks.apps import floor
from benchmarks.queues import QUEUES, fresh_pg_database, run_one
from benchmarks.readme import machine_line, publish

ROUNDS = 3
WORKERS = ("Celery prefork (2)", "Celery threads (4)")
# Targets: flow-tracker's loss, with its defaults, at most this many points above
# the floor's loss and above Celery's task events' loss, measured in the same run.
OVER_FLOOR = 0.10
OVER_EVENTS = 0.05


def _settings(database_url: str) -> dict[str, dict[str, str]]:
    # Celery's database backend speaks SQLAlchemy: the same server and database.
    backend = "db+" + database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return {
        "off": {"FLOW_TRACKER_ENABLED": "false"},
        "flow-tracker": {},
        "Celery result backend": {
            "FLOW_TRACKER_ENABLED": "false",
            "FT_BENCH_CELERY_BACKEND": backend,
        },
        "Celery task events": {"FLOW_TRACKER_ENABLED": "false", "FT_BENCH_CELERY_EVENTS": "1"},
        "floor: 2 commits": {"FLOW_TRACKER_ENABLED": "false", "FT_BENCH_FLOOR": database_url},
    }


def main(argv: list[str]) -> int:
    """Run the comparison and check its targets; exit 1 when one is missed."""
    quick = "--quick" in argv
    rounds = 1 if quick else ROUNDS
    database_url = fresh_pg_database()
    floor.create_table(database_url)
    settings = _settings(database_url)
    names = list(settings)
    print("\nalternatives: a trivial Celery task, jobs/s (tracking and results to PostgreSQL)\n")
    rows = [
        "| worker | off j/s | "
        + " | ".join(f"{n} j/s | loss | cost/job" for n in names[1:])
        + " |",
        "|---|---:|" + "---:|---:|---:|" * (len(names) - 1),
    ]
    checks: list[tuple[str, bool, str]] = []
    for queue in QUEUES:
        if queue.name not in WORKERS:
            continue
        if quick:
            queue.jobs = max(100, queue.jobs // 5)
        rates: dict[str, float] = {}
        for _ in range(rounds):
            for name in names:
                rate, _enqueue = run_one(queue, "trivial", name, database_url, settings)
                rates[name] = max(rate, rates.get(name, 0.0))
        off = rates["off"]
        cost = {n: (1 / rates[n] - 1 / off) * 1e3 for n in names}  # ms of worker time per job
        loss = {n: 1 - rates[n] / off for n in names}
        print(f"  {queue.name:20} " + "  ".join(f"{n}: {rates[n]:,.0f} j/s" for n in names))
        ours = loss["flow-tracker"]
        targets = (
            ("floor: 2 commits", "the floor's", OVER_FLOOR),
            ("Celery task events", "Celery task events'", OVER_EVENTS),
        )
        for other, whose, allowed in targets:
            checks.append(
                (
                    f"{queue.name}: loss ≤ {whose} + {allowed * 100:.0f} points",
                    ours <= loss[other] + allowed,
                    f"{ours:.0%} vs {loss[other]:.0%} ({(ours - loss[other]) * 100:+.0f} points)",
                )
            )
        rows.append(
            f"| {queue.name} | {off:,.0f} | "
            + " | ".join(f"{rates[n]:,.0f} | {loss[n]:.0%} | {cost[n]:.2f} ms" for n in names[1:])
            + " |"
        )
    header = (
        f"Measured by `python -m benchmarks alternatives{' --quick' if quick else ''}` on "
        f"{machine_line()}; the trivial task, {QUEUES[0].jobs:,} jobs per run, best of "
        f"{rounds}; flow-tracker with its defaults and Celery's database result backend "
        "(`task_track_started=True`) both writing to the same PostgreSQL, and the floor's "
        "two commits per task too."
    )
    print("\ntargets:")
    for label, ok, value in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {label:56} {value}")
    verdicts = [f"{label}: {value}, {'met' if ok else 'missed'}." for label, ok, value in checks]
    lines = [header, "", *rows, "", "Targets: " + " ".join(verdicts)]
    publish("alternatives", lines, readme="--readme" in argv)
    return 0 if all(ok for _, ok, _ in checks) else 1
