"""Step analytics for the workflows pages, read from the dashboard's rollups.

A workflow run is a process named after its workflow, each step a process
named ``<workflow>.<step>``, all in the ``workflows`` category, so the hourly
and daily rollups (:mod:`flow_tracker.store.rollups`) already count them: this
module only regroups those rows by workflow and step. No page scans step rows,
except the one run whose critical path is drawn.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flow_tracker.status import Status
from flow_tracker.store import queries, rollups
from flow_tracker.store.engine import Store
from flow_tracker.store.histogram import percentile
from flow_tracker.store.workflows import CATEGORY
from flow_tracker.web.statistics import refresh_rollups, window_span
from flow_tracker.workflows import manage
from flow_tracker.workflows.status import WorkflowStatus

RECENT_RUNS = 50  # runs looked at for the slowest recent one


@dataclass(frozen=True)
class StepStats:
    """Finished attempts of one step within the window."""

    name: str
    count: int
    failed: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def failure_rate(self) -> float | None:
        """Failed of finished, or None with none finished."""
        return self.failed / self.count if self.count else None


@dataclass(frozen=True)
class WorkflowStats:
    """One workflow within the window: its runs, its steps, a critical path."""

    name: str
    runs: int
    failed_runs: int
    p50_ms: float | None
    p95_ms: float | None
    steps: list[StepStats] = field(default_factory=list)
    slowest_run: str | None = None
    critical_path: list[tuple[str, float]] = field(default_factory=list)
    """Steps of the slowest recent run that made it last that long: (step, ms)."""

    @property
    def failure_rate(self) -> float | None:
        """Failed runs of finished runs."""
        return self.failed_runs / self.runs if self.runs else None


def critical_path(run: WorkflowStatus) -> list[tuple[str, float]]:
    """From the step that ended last, back through the parent each one waited for last."""
    ended = {n: s for n, s in run.steps.items() if s.finished_at is not None}
    if not ended:
        return []
    current: str | None = max(ended, key=lambda n: ended[n].finished_at or run.created_at)
    path: list[tuple[str, float]] = []
    while current is not None:
        step = run.steps[current]
        path.append((current, step.duration_ms or 0.0))
        parents = [p for p in step.depends_on if run.steps[p].finished_at is not None]
        current = (
            max(parents, key=lambda p: run.steps[p].finished_at or run.created_at)
            if parents
            else None
        )
    return list(reversed(path))


def analytics(
    store: Store, window: str, rollup_state: tuple[datetime | None, str] | None = None
) -> list[WorkflowStats]:
    """Per workflow and step: runs, p50/p95 duration, failure rate, and a critical path."""
    now = queries.database_time(store)
    if rollup_state is None:
        refresh_rollups(store, now)
        with store.engine.connect() as conn:
            rollup_state = rollups.read_version(conn)
    span = window_span(window, now, *rollup_state)
    with store.engine.connect() as conn:
        counts = rollups.read_counts(conn, store, span)
        histograms = rollups.read_histograms(conn, store, span)
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in counts:
        if row.kind == "p" and row.category == CATEGORY:
            totals[row.name][0] += row.count
            if row.status == Status.FAILED.value:
                totals[row.name][1] += row.count
    workflows = {name for name in totals if "." not in name}
    found: list[WorkflowStats] = []
    for workflow in sorted(workflows):
        hist = histograms.get(("p", workflow), {})
        steps = [
            StepStats(
                name=name[len(workflow) + 1 :],
                count=count,
                failed=failed,
                p50_ms=percentile(histograms.get(("p", name), {}), 0.50),
                p95_ms=percentile(histograms.get(("p", name), {}), 0.95),
            )
            for name, (count, failed) in totals.items()
            if name.startswith(workflow + ".")
        ]
        steps.sort(key=lambda s: (s.p95_ms or 0.0, s.count), reverse=True)
        slowest, path = _slowest_recent(store, workflow)
        runs, failed_runs = totals[workflow]
        found.append(
            WorkflowStats(
                name=workflow,
                runs=runs,
                failed_runs=failed_runs,
                p50_ms=percentile(hist, 0.50),
                p95_ms=percentile(hist, 0.95),
                steps=steps,
                slowest_run=slowest,
                critical_path=path,
            )
        )
    return found


def _slowest_recent(store: Store, workflow: str) -> tuple[str | None, list[tuple[str, float]]]:
    recent: list[dict[str, Any]] = manage.list_workflows(
        name=workflow, status="completed", limit=RECENT_RUNS, store=store
    )
    timed = [r for r in recent if r["duration_ms"] is not None]
    if not timed:
        return None, []
    slowest = max(timed, key=lambda r: r["duration_ms"])
    return slowest["id"], critical_path(manage.get_workflow(slowest["id"], store=store))
