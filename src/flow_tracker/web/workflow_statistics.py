"""Step analytics for the workflows pages, read from the dashboard's rollups.

A workflow run is a process named after its workflow, each step a process
named ``<workflow>.<step>``, all in the ``workflows`` category, so the hourly
and daily rollups (:mod:`flow_tracker.store.rollups`) already count them: this
module only regroups those rows by workflow and step. No page scans step rows,
except the one run whose critical path is drawn.
"""

from __future__ import annotations

import heapq
import threading
import uuid
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from flow_tracker.store import dashboard, queries, rollups
from flow_tracker.store import workflows as stored
from flow_tracker.store.engine import Store
from flow_tracker.store.histogram import percentile
from flow_tracker.store.workflows import CATEGORY
from flow_tracker.web.statistics import refresh_rollups, window_span
from flow_tracker.workflows.status import step_duration_ms

RECENT_RUNS = 50  # runs looked at for the slowest recent one
STEPS_SHOWN = 20  # steps listed per workflow (slowest first) unless one workflow is asked for


@dataclass(frozen=True)
class StepStats:
    """Finished attempts of one step within the window."""

    name: str
    count: int
    failed: int
    p50_ms: float | None
    p95_ms: float | None
    retried: int = 0
    """Of ``count``, how many took more than one attempt."""

    @property
    def failure_rate(self) -> float | None:
        """Failed of finished, or None with none finished."""
        return self.failed / self.count if self.count else None

    @property
    def retry_rate(self) -> float | None:
        """Retried of finished, or None with none finished."""
        return self.retried / self.count if self.count else None


@dataclass(frozen=True)
class WorkflowStats:
    """One workflow within the window: its runs, its steps, a critical path."""

    name: str
    runs: int
    failed_runs: int
    p50_ms: float | None
    p95_ms: float | None
    steps: list[StepStats] = field(default_factory=list)
    """The slowest steps (all of them when one workflow was asked for)."""
    steps_total: int = 0
    """How many steps finished in the window, listed or not."""
    finished_steps: int = 0
    retried_steps: int = 0
    slowest_run: str | None = None
    critical_path: list[tuple[str, float]] = field(default_factory=list)
    """Steps of the slowest recent run that made it last that long: (step, ms)."""

    @property
    def failure_rate(self) -> float | None:
        """Failed runs of finished runs."""
        return self.failed_runs / self.runs if self.runs else None

    @property
    def retry_rate(self) -> float | None:
        """Steps that took more than one attempt, of finished steps."""
        return self.retried_steps / self.finished_steps if self.finished_steps else None


def critical_path(
    parents: dict[str, list[str]], times: dict[str, tuple[datetime | None, datetime | None]]
) -> list[tuple[str, float]]:
    """From the step that ended last, back through the parent each one waited for last.

    Args:
        parents: each step's parents.
        times: each step's (start, end).
    """
    ended = {n: t for n, t in times.items() if t[1] is not None}
    if not ended:
        return []

    def end(name: str) -> datetime:
        moment = ended[name][1]
        assert moment is not None
        return moment

    current: str | None = max(ended, key=end)
    path: list[tuple[str, float]] = []
    while current is not None:
        start, finish = times[current]
        path.append((current, step_duration_ms(start, finish) or 0.0))
        waited = [p for p in parents.get(current, ()) if p in ended]
        current = max(waited, key=end) if waited else None
    return list(reversed(path))


def _workflow_of(name: str, workflows: set[str]) -> str | None:
    """The workflow a step's process name belongs to: the longest run name before a dot."""
    cut = len(name)
    while (cut := name.rfind(".", 0, cut)) > 0:
        if name[:cut] in workflows:
            return name[:cut]
    return None


def analytics(
    store: Store,
    window: str,
    rollup_state: rollups.RollupVersion | None = None,
    *,
    only: str | None = None,
) -> list[WorkflowStats]:
    """Per workflow and step: runs, p50/p95 duration, failure and retry rates, a critical path.

    Args:
        store: the tracking database.
        window: one of the dashboard's windows (``24h``, ``7d``…).
        rollup_state: the rollups' version, when the caller knows it.
        only: one workflow, with all its steps; else every workflow, each with its
            :data:`STEPS_SHOWN` slowest steps.
    """
    now = queries.database_time(store)
    if rollup_state is None:
        refresh_rollups(store, now)
        rollup_state = rollups.stored_version(store)
    span = window_span(window, now, *rollup_state)
    totals, histograms = dashboard.category_parts(store, span, CATEGORY)
    names = set(totals.finished)
    # Runs are processes named after their workflow; steps are named <workflow>.<step>.
    # A name that prefixes another one (before a dot) is a workflow.
    workflows = {n for n in names if "." not in n}
    for name in names:
        cut = len(name)
        while (cut := name.rfind(".", 0, cut)) > 0:
            if name[:cut] in names:
                workflows.add(name[:cut])
    if only is not None:
        workflows &= {only}
    # Counted in plain dicts of numbers and ranked as tuples of numbers and names:
    # a workflow of thousands of steps then keeps no object per step alive while
    # the page renders (Python's collector would walk each one, in the host's
    # process too), and only the listed steps become StepStats.
    finished, failed, retried = totals.finished, totals.failed, totals.retried
    ranked: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for name, count in finished.items():
        if name in workflows:
            continue
        workflow = _workflow_of(name, workflows)
        if workflow is not None:
            p95 = percentile(histograms.get(("p", name), {}), 0.95)
            ranked[workflow].append((p95 or 0.0, count, name))

    def listed(workflow: str, entries: list[tuple[float, int, str]]) -> list[StepStats]:
        # Slowest first; among equals, the busier first, then as the rollups listed them.
        chosen = heapq.nlargest(
            len(entries) if only is not None else STEPS_SHOWN, entries, key=lambda e: e[:2]
        )
        steps = []
        for _p95, count, name in chosen:
            hist = histograms.get(("p", name), {})
            steps.append(
                StepStats(
                    name=name[len(workflow) + 1 :],
                    count=count,
                    failed=failed.get(name, 0),
                    p50_ms=percentile(hist, 0.50),
                    p95_ms=percentile(hist, 0.95),
                    retried=retried.get(name, 0),
                )
            )
        return steps

    found: list[WorkflowStats] = []
    for workflow in sorted(workflows):
        entries = ranked.get(workflow, [])
        hist = histograms.get(("p", workflow), {})
        slowest, path = _slowest_recent(store, workflow)
        found.append(
            WorkflowStats(
                name=workflow,
                runs=finished.get(workflow, 0),
                failed_runs=failed.get(workflow, 0),
                p50_ms=percentile(hist, 0.50),
                p95_ms=percentile(hist, 0.95),
                steps=listed(workflow, entries),
                steps_total=len(entries),
                finished_steps=sum(e[1] for e in entries),
                retried_steps=sum(retried.get(e[2], 0) for e in entries),
                slowest_run=slowest,
                critical_path=path,
            )
        )
    return found


def _slowest_recent(store: Store, workflow: str) -> tuple[str | None, list[tuple[str, float]]]:
    slowest = stored.slowest_recent_run(store, workflow, RECENT_RUNS)
    if slowest is None:
        return None, []
    return str(slowest), _critical_path_of(store, slowest)


# Critical paths of completed runs, which never change: a page view computes each once.
_PATHS: OrderedDict[tuple[int, uuid.UUID], list[tuple[str, float]]] = OrderedDict()
_PATHS_KEPT = 256
_paths_lock = threading.Lock()


def _critical_path_of(store: Store, run_id: uuid.UUID) -> list[tuple[str, float]]:
    key = (id(store), run_id)
    with _paths_lock:
        if key in _PATHS:
            _PATHS.move_to_end(key)
            return _PATHS[key]
    dag, rows = stored.step_times(store, run_id)
    parents = {s["name"]: list(s.get("depends_on") or ()) for s in dag.get("steps", [])}
    path = critical_path(parents, {r.name: (r.started_at, r.finished_at) for r in rows})
    with _paths_lock:
        _PATHS[key] = path
        while len(_PATHS) > _PATHS_KEPT:
            _PATHS.popitem(last=False)
    return path
