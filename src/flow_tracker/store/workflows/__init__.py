"""How workflow runs and their steps are stored (see :mod:`flow_tracker.workflows`).

Every change of a run's state is one transaction that first locks the run's row
(``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises
all writers anyway). That lock is what makes scheduling exactly-once:

* a step's end and the readiness of its children are decided together: the
  children's ``waiting`` counts drop in the same statement, and only the
  transaction that brings a count to zero queues that child;
* ``active`` (steps queued, running or waiting to retry) and ``failed`` on the
  run row say when the run has ended without counting its steps each time, so
  ending a step costs the same in a run of 3 steps or of 2,000;
* a worker takes a step only by moving it from ``queued`` or ``retrying`` to
  ``running`` (:mod:`flow_tracker.store.step_writes`, with the step's end: the
  two writes of every step, in the driver's own SQL); a second delivery of the
  same message finds it running and stands down, and a completed step is never
  taken again.

A step's process row (the tracked job) is written here when the step is queued,
so the dashboard shows it queued; the worker's tracker then updates that row.

By concept, mirroring :mod:`flow_tracker.workflows`:

* :mod:`.dispatch` - what a change sets in motion (:class:`Dispatch`, :class:`Ended`,
  the outbox hold);
* :mod:`.runs` - a run's life: its lock, its end, releasing waiting steps (the pieces the
  other writes share), and :func:`finish_run`;
* :mod:`.actions` - by hand: retry, resolve, cancel;
* :mod:`.recovery` - lost steps, overdue retries, stalled runs;
* :mod:`.reads` - a run's status and results, the list of runs, an ended run;
* :mod:`.shapes` - the parsed-DAG cache the reads share.

Starting a run is :mod:`flow_tracker.store.starting`; claiming and ending a step is
:mod:`flow_tracker.store.step_writes`. The names below are the package's API:
import them from here, not from the modules.
"""

from __future__ import annotations

from flow_tracker.store.workflows.actions import (
    ALREADY_CANCELLED,
    NotAllowed,
    cancel_run,
    resolve_failed_step,
    retry_failed_step,
)
from flow_tracker.store.workflows.dispatch import NOTHING, Dispatch, Ended, Hold, hold_in
from flow_tracker.store.workflows.reads import (
    PREVIEW_CHARS,
    EndedRun,
    RunRow,
    StepRow,
    ended_run,
    list_runs,
    read_results,
    read_run,
    run_status,
    run_version,
    slowest_recent_run,
    step_times,
)
from flow_tracker.store.workflows.recovery import (
    lost_steps,
    overdue_retries,
    requeue_lost_step,
    stalled_runs,
)
from flow_tracker.store.workflows.runs import (
    ACTIVE,
    CATEGORY,
    DONE,
    ERROR_LIMIT,
    PENDING,
    RESOLVED,
    RUN_RUNNING,
    TAKEABLE,
    error_columns,
    finish_run,
)
from flow_tracker.store.workflows.shapes import DagShape

__all__ = [
    "ACTIVE",
    "ALREADY_CANCELLED",
    "CATEGORY",
    "DONE",
    "ERROR_LIMIT",
    "NOTHING",
    "PENDING",
    "PREVIEW_CHARS",
    "RESOLVED",
    "RUN_RUNNING",
    "TAKEABLE",
    "DagShape",
    "Dispatch",
    "Ended",
    "EndedRun",
    "Hold",
    "NotAllowed",
    "RunRow",
    "StepRow",
    "cancel_run",
    "ended_run",
    "error_columns",
    "finish_run",
    "hold_in",
    "list_runs",
    "lost_steps",
    "overdue_retries",
    "read_results",
    "read_run",
    "requeue_lost_step",
    "resolve_failed_step",
    "retry_failed_step",
    "run_status",
    "run_version",
    "slowest_recent_run",
    "stalled_runs",
    "step_times",
]
