"""Looking at runs and acting on them by hand: status, retry, resolve, cancel, diagram."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from flow_tracker import config, delivery
from flow_tracker.delivery import Delivery
from flow_tracker.errors import NotFoundError, UsageError
from flow_tracker.redaction import Redactor, clean_text, redact_text
from flow_tracker.status import RunState, StepState
from flow_tracker.store import audit
from flow_tracker.store import workflows as stored
from flow_tracker.store.engine import Store
from flow_tracker.workflows import announce
from flow_tracker.workflows.database import workflow_store
from flow_tracker.workflows.engine import as_json, cannot_send, send
from flow_tracker.workflows.starting import check_tags, who
from flow_tracker.workflows.status import (
    WorkflowStatus,
    as_run_id,
    get_workflow,
    notify_ended,
    read_status,
)

__all__ = [
    "WorkflowStatus",
    "cancel_workflow",
    "diagram_text",
    "get_workflow",
    "list_workflows",
    "resolve_step",
    "retry_failed_steps",
    "retry_step",
    "shown",
    "workflow_diagram",
]

REASON_LIMIT = 500
RUN_STATES = tuple(s.value for s in RunState)
# The statuses of a step whose message may wait in the outbox (see shown()).
UNSENT_STATUSES = frozenset({StepState.QUEUED.value, StepState.RETRYING.value})


def _audit_detail(step: str | None, by: str | None, reason: str | None) -> dict[str, Any]:
    """A manual action's parameters for its audit row: never a result or a context."""
    detail: dict[str, Any] = {}
    if step is not None:
        detail["step"] = step
    if by:
        detail["by"] = str(by)
    if reason:
        detail["reason"] = str(reason)
    return detail


def _reason(action: str, step: str | None, by: str | None, reason: str | None) -> str:
    """The reason of a manual action as stored in the state history and shown on pages.

    The reason is anyone's text, typed into the dashboard: its secrets are cut out
    (``password=...``, a URL's password) and NUL and lone surrogates escaped, which
    PostgreSQL would refuse, failing the action. Cut to :data:`REASON_LIMIT` last,
    so that an escape cannot make it longer and a cut cannot leave half a secret.
    """
    text = f"{action} step {step}" if step is not None else action
    text += f" by {who(by)}"
    if reason:
        text += f": {redact_text(str(reason))}"
    return clean_text(text)[:REASON_LIMIT]


# Outlines of finished runs with no step still active. Nothing changes those but a
# manual action, which rewrites the run's row: a large finished run's page, viewed
# again and again, then reads one row instead of thousands, and keeps no new objects
# alive for Python's collector to walk in the host's process.
_OUTLINES: OrderedDict[
    tuple[int, uuid.UUID, int | None], tuple[tuple[Any, ...], WorkflowStatus]
] = OrderedDict()
_OUTLINES_KEPT = 32
_outlines_lock = threading.Lock()


def get_workflow_outline(
    run_id: uuid.UUID | str, *, store: Store | None = None, preview_over: int | None = None
) -> WorkflowStatus:
    """The run as :func:`get_workflow` reads it, but every step's result left None.

    What a page needs to draw a large run: results are most of what a step's row
    holds, and a page shows those of the steps it lists (:func:`with_results`).
    A finished run's outline is read once per process, and again only when its
    row says it changed. Read it, never change it: it is shared.

    Raises:
        NotFoundError: no run has this id.
    """
    chosen = store or workflow_store()
    ident = as_run_id(run_id)
    key = (id(chosen), ident, preview_over)
    version = stored.run_version(chosen, ident)
    if version is None:
        raise NotFoundError(f"no workflow run {run_id}")
    with _outlines_lock:
        cached = _OUTLINES.get(key)
        if cached is not None and cached[0] == version:
            _OUTLINES.move_to_end(key)
            return cached[1]
    outline = read_status(ident, chosen, results=False, preview_over=preview_over)
    # Kept only under the version it was read after, and only once nothing moves it:
    # a change between the two reads leaves a version no later read will match.
    status, active = version[0], version[1]
    if status == outline.status and outline.finished and active == 0:
        with _outlines_lock:
            _OUTLINES[key] = (version, outline)
            _OUTLINES.move_to_end(key)
            while len(_OUTLINES) > _OUTLINES_KEPT:
                _OUTLINES.popitem(last=False)
    return outline


def with_results(
    status: WorkflowStatus,
    names: Iterable[str],
    *,
    store: Store | None = None,
    preview_over: int | None = None,
) -> WorkflowStatus:
    """``status`` with the stored results of the steps ``names`` (see :func:`get_workflow`)."""
    wanted = [n for n in dict.fromkeys(names) if n in status.steps]
    results = stored.read_results(
        store or workflow_store(), status.id, wanted, preview_over=preview_over
    )
    steps = dict(status.steps)
    for name in wanted:
        steps[name] = dataclasses.replace(steps[name], result=results.get(name))
    return dataclasses.replace(status, steps=steps)


def list_workflows(
    *,
    name: str | None = None,
    status: str | None = None,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
    tags: Mapping[str, str] | None = None,
    store: Store | None = None,
) -> list[dict[str, Any]]:
    """Runs newest first (name, status, steps done of total, failed step), as JSON-ready dicts.

    ``before``: the ``(created_at, id)`` of the last run of the previous page.
    ``tags``: only runs carrying every one of these tags.
    """
    if status is not None and status not in RUN_STATES:
        raise UsageError(f"a run's status is {', '.join(RUN_STATES)}, not {status!r}")
    if not 1 <= int(limit) <= 1000:
        raise UsageError("limit is between 1 and 1000")
    rows = stored.list_runs(
        store or workflow_store(),
        name=name,
        status=status,
        limit=int(limit),
        before=before,
        tags=check_tags(tags),
    )
    return [
        {
            "id": str(row.id),
            "name": row.name,
            "queue": row.queue,
            "status": row.status,
            "failed_step": row.failed_step,
            "version": row.version,
            "tags": row.tags or {},
            "steps_done": int(row.steps_done or 0),
            "steps_total": int(row.steps_total or 0),
            "created_at": row.created_at.isoformat(),
            "finished_at": None if row.finished_at is None else row.finished_at.isoformat(),
            "duration_ms": None
            if row.finished_at is None
            else (row.finished_at - row.created_at).total_seconds() * 1000.0,
        }
        for row in rows
    ]


def _act(
    action: Any, store: Store, run_id: uuid.UUID, *args: Any, hook: audit.Hook
) -> stored.Ended:
    step = args[0]
    if not isinstance(step, str) or clean_text(step) != step:
        # No step can have this name (names are checked when declared), and
        # PostgreSQL would refuse to even look for one with a NUL in it.
        raise NotFoundError(f"run {run_id} has no step {step!r}")
    try:
        ended: stored.Ended = action(store, run_id, *args, audit=hook)
        return ended
    except LookupError as exc:
        raise NotFoundError(str(exc)) from None
    except stored.NotAllowed as exc:
        raise UsageError(str(exc)) from None


def retry_step(
    run_id: uuid.UUID | str,
    step: str,
    *,
    by: str | None = None,
    reason: str | None = None,
    store: Store | None = None,
) -> Delivery:
    """Run a failed step again, then whatever waits on it; a failed run goes on running.

    Steps that completed are not run again. The action is kept in the run's and
    the step's state history (who, and why).

    Returns what became of the step's message: ``sent``, or (where this process
    cannot send it: no integration of its queue here, a ``threads`` workflow not
    declared here, a broker that refused it) ``waiting for a worker of <queue>``,
    stored in the outbox with the change (see :mod:`flow_tracker.delivery`).

    The action is kept in the audit log (``workflows:retry``), committed with the
    change; one that fails is kept as failed.

    Raises:
        NotFoundError: no such run or step.
        UsageError: the step is not failed, or the run was cancelled.
    """
    chosen = store or workflow_store()
    with audit.failures_recorded(
        chosen,
        action="workflows:retry",
        target=str(run_id),
        detail=_audit_detail(step, by, reason),
    ):
        return _retry_one(run_id, step, by, reason, chosen)


def _retry_one(
    run_id: uuid.UUID | str, step: str, by: str | None, reason: str | None, store: Store
) -> Delivery:
    """:func:`retry_step` but for its failed row (left to the caller): the audited change."""
    run = as_run_id(run_id)
    hook = audit.on_change(
        action="workflows:retry", target=str(run), detail=_audit_detail(step, by, reason)
    )
    text = _reason("retried", step, by, reason)
    ended = _act(stored.retry_failed_step, store, run, step, text, cannot_send, hook=hook)
    workflow = ended.dispatches[0].workflow if ended.dispatches else None
    announce.step_retrying(
        run, workflow, step, attempt=None, delay=None, error=None, by=who(by), reason=reason
    )
    return _delivered(ended)


def _delivered(ended: stored.Ended) -> Delivery:
    """Send what a manual action set in motion, unless it waits in the outbox already."""
    if ended.held:
        systems = tuple(dict.fromkeys(d.system for d in ended.dispatches))
        return Delivery(waiting=systems)
    return send(ended.dispatches)


@dataclasses.dataclass(frozen=True)
class RetriedSteps:
    """What :func:`retry_failed_steps` did: the steps retried and their messages' fate."""

    steps: tuple[str, ...]
    """The failed steps queued again, in the run's order."""
    delivery: Delivery
    """Their messages together: all sent, or some waiting for a worker (see ``retry_step``)."""


def retry_failed_steps(
    run_id: uuid.UUID | str,
    *,
    by: str | None = None,
    reason: str | None = None,
    store: Store | None = None,
) -> RetriedSteps:
    """Retry every failed step of a run at once, as :func:`retry_step` retries one.

    Each step is retried on its own (its attempts go on counting; each retry is
    kept in the run's history with who and why); a step that someone else retried
    or resolved meanwhile is left to them.

    Each retried step has its own row in the audit log, as :func:`retry_step`
    writes it; when none could be retried, one failed row says why.

    Raises:
        NotFoundError: no such run.
        UsageError: the run was cancelled, or has no failed step.
    """
    chosen = store or workflow_store()
    with audit.failures_recorded(
        chosen,
        action="workflows:retry",
        target=str(run_id),
        detail={**_audit_detail(None, by, reason), "all_failed": True},
    ):
        return _retry_failed(run_id, by, reason, chosen)


def _retry_failed(
    run_id: uuid.UUID | str, by: str | None, reason: str | None, chosen: Store
) -> RetriedSteps:
    run = as_run_id(run_id)
    status = get_workflow_outline(run, store=chosen)
    if status.status == RunState.CANCELLED.value:
        raise UsageError(f"workflow run {run} was cancelled; nothing in it starts again")
    failed = [name for name, step in status.steps.items() if step.status == StepState.FAILED.value]
    if not failed:
        raise UsageError(f"workflow run {run} has no failed step to retry")
    retried: list[str] = []
    deliveries: list[Delivery] = []
    for name in failed:
        try:
            deliveries.append(_retry_one(run, name, by, reason, chosen))
        except UsageError:  # no longer failed: retried or resolved by someone else since
            continue
        retried.append(name)
    if not retried:
        raise UsageError(f"workflow run {run} has no failed step to retry")
    delivery = Delivery(
        sent=sum(d.sent for d in deliveries),
        waiting=tuple(dict.fromkeys(q for d in deliveries for q in d.waiting)),
        error=next((d.error for d in deliveries if d.error), None),
    )
    return RetriedSteps(tuple(retried), delivery)


def resolve_step(
    run_id: uuid.UUID | str,
    step: str,
    *,
    result: Any = None,
    reason: str | None = None,
    by: str | None = None,
    store: Store | None = None,
) -> Delivery:
    """Mark a failed step done by hand with ``result``, so that what waits on it goes on.

    ``result`` reaches the step's children as if the step had returned it.
    Returns what became of the messages of the children it released (see
    :func:`retry_step`): ``sent``, ``nothing to send`` or ``waiting for a worker of <queue>``.

    The audit log keeps the step and the reason (``workflows:resolve``), never the
    result, committed with the change; an action that fails is kept as failed.

    Raises:
        NotFoundError: no such run or step.
        UsageError: the step is not failed, the run was cancelled, or ``result``
            is not JSON.
    """
    chosen = store or workflow_store()
    detail = _audit_detail(step, by, reason)
    with audit.failures_recorded(
        chosen, action="workflows:resolve", target=str(run_id), detail=detail
    ):
        run = as_run_id(run_id)
        value = as_json(
            result,
            f"the result given to resolve step {step!r}",
            config.current().max_result_bytes,
        )
        reason_text = _reason("resolved", step, by, reason)
        hook = audit.on_change(action="workflows:resolve", target=str(run), detail=detail)
        ended = _act(
            stored.resolve_failed_step,
            chosen,
            run,
            step,
            value,
            reason_text,
            cannot_send,
            hook=hook,
        )
    announce.step_resolved(chosen, run, step, by=who(by), reason=reason)
    announce.run_ended(chosen, run, ended.run_status)
    return _delivered(ended)


def cancel_workflow(
    run_id: uuid.UUID | str,
    *,
    by: str | None = None,
    reason: str | None = None,
    store: Store | None = None,
) -> int:
    """Cancel a run: no step that has not started starts; steps running now finish.

    Returns how many steps were cancelled. Cancelling a cancelled run changes nothing.
    The audit log keeps it (``workflows:cancel``, with the steps cancelled),
    committed with the change; an action that fails is kept as failed.

    Raises:
        NotFoundError: no such run.
        UsageError: the run has completed.
    """
    chosen = store or workflow_store()
    detail = _audit_detail(None, by, reason)
    with audit.failures_recorded(
        chosen, action="workflows:cancel", target=str(run_id), detail=detail
    ):
        run = as_run_id(run_id)
        text = _reason("cancelled", None, by, reason)
        hook = audit.on_change(action="workflows:cancel", target=str(run), detail=detail)
        try:
            count = stored.cancel_run(chosen, run, text, audit=hook)
        except LookupError as exc:
            raise NotFoundError(str(exc)) from None
        except stored.NotAllowed as exc:
            raise UsageError(str(exc)) from None
    if count == stored.ALREADY_CANCELLED:
        notify_ended(run)
        return 0
    announce.run_ended(
        chosen, run, RunState.CANCELLED.value, by=who(by), reason=reason, cancelled_steps=count
    )
    notify_ended(run)
    return count


# Mermaid class per step status: fill and stroke that read on light and dark pages.
# Its keys are the step statuses; anything else is drawn as "unknown".
_STYLES: dict[str, str] = {
    StepState.PENDING.value: "fill:#f1f5f9,stroke:#94a3b8,color:#334155",
    StepState.QUEUED.value: "fill:#e0f2fe,stroke:#0284c7,color:#0c4a6e",
    StepState.RUNNING.value: "fill:#dbeafe,stroke:#2563eb,color:#1e3a8a",
    StepState.RETRYING.value: "fill:#fef3c7,stroke:#d97706,color:#78350f",
    StepState.COMPLETED.value: "fill:#dcfce7,stroke:#16a34a,color:#14532d",
    StepState.RESOLVED.value: "fill:#d1fae5,stroke:#059669,color:#064e3b",
    StepState.SKIPPED.value: "fill:#f3f4f6,stroke:#6b7280,color:#374151",
    StepState.FAILED.value: "fill:#fee2e2,stroke:#dc2626,color:#7f1d1d",
    StepState.LOST.value: "fill:#fce7f3,stroke:#db2777,color:#831843",
    StepState.CANCELLED.value: "fill:#e5e7eb,stroke:#4b5563,color:#1f2937",
}
UNKNOWN_STATUS = "unknown"
_UNKNOWN_STYLE = "fill:#fff7ed,stroke:#9a3412,color:#7c2d12,stroke-dasharray:4 2"


def known_step_status(status: str) -> str:
    """``status`` if it is a step status, else ``"unknown"``.

    What a page or a diagram uses as a class name: a status is whatever the
    row holds, and a row can be written by hand (``UPDATE ... SET status = ...``).
    """
    return status if status in _STYLES else UNKNOWN_STATUS


# Each character Mermaid reads as syntax even inside a quoted label, as an entity:
# a quote ends the label; "#" starts Mermaid's own entity codes; "%%{...}%%" is a
# directive wherever it appears (it would restyle the whole diagram); a backtick
# right after the opening quote makes a Markdown string, which a label never is.
_MERMAID_ESCAPES = {
    "&": "&amp;",
    "#": "&num;",
    '"': "&quot;",
    "<": "&lt;",
    ">": "&gt;",
    "%": "&percnt;",
    "`": "&grave;",
}


def _mermaid_label(text: str) -> str:
    """``text`` safe inside a quoted Mermaid label: on one line, no syntax of its own."""
    escaped = "".join(_MERMAID_ESCAPES.get(ch, ch) for ch in text)
    # Line and paragraph breaks and other control characters would end the statement.
    return "".join(" " if ch.isspace() or ord(ch) < 32 or ord(ch) == 127 else ch for ch in escaped)


def diagram_text(status: WorkflowStatus) -> str:
    """Mermaid flowchart text of a run, steps coloured by status.

    Labels are escaped (:func:`_mermaid_label`) and class names are known step
    statuses (:func:`known_step_status`): a step's name or status cannot add a
    directive, a style or a line of its own to the diagram.
    """
    ids = {name: f"s{index}" for index, name in enumerate(status.steps)}
    lines = ["flowchart TD"]
    for name, step in status.steps.items():
        label = f"{_mermaid_label(name)}<br/>{_mermaid_label(step.status)}"
        if step.attempts > 1:
            label += f" ({step.attempts} attempts)"
        lines.append(f'    {ids[name]}["{label}"]')
    for name, step in status.steps.items():
        for parent in step.depends_on:
            if parent in ids:
                lines.append(f"    {ids[parent]} --> {ids[name]}")
    used = sorted({known_step_status(step.status) for step in status.steps.values()})
    for state in used:
        lines.append(f"    classDef {state} {_STYLES.get(state, _UNKNOWN_STYLE)}")
    for name, step in status.steps.items():
        lines.append(f"    class {ids[name]} {known_step_status(step.status)}")
    return "\n".join(lines) + "\n"


def workflow_diagram(run_id: uuid.UUID | str, *, store: Store | None = None) -> str:
    """Mermaid flowchart text of the run, steps coloured by status.

    Raises:
        NotFoundError: no run has this id.
    """
    return diagram_text(get_workflow(run_id, store=store))


def shown(
    status: WorkflowStatus, steps: Iterable[str] | None = None, *, store: Store | None = None
) -> dict[str, Any]:
    """The run as JSON for people (API, CLI): context and results redacted like metadata.

    :func:`get_workflow` returns them intact: they are the steps' inputs. Each
    step says whether its message waits in the outbox: ``delivery`` is
    ``waiting for a worker of <queue>`` (else None) and ``delivery_waiting_s``
    how long it has waited — one query for the whole run, none when no step is queued.

    Args:
        status: the run.
        steps: only these steps (a page listing part of a large run); default all.
        store: the tracking database to read the outbox from (default: the configured one).
    """
    redactor = Redactor(config.current().redact_keys)
    data = status.to_dict(steps)
    data["context"] = redactor.scrub(data["context"])
    for step in data["steps"]:
        step["result"] = redactor.scrub(step["result"])
        if step["error"]:
            step["error"] = redact_text(step["error"])
        step["delivery"] = step["delivery_waiting_s"] = None
    # A step held for a worker reads "queued" (or "retrying", due later) until sent.
    unsent = [s for s in data["steps"] if s["process_id"] and s["status"] in UNSENT_STATUSES]
    if unsent:
        found = delivery.waiting(
            [uuid.UUID(s["process_id"]) for s in unsent], store=store or workflow_store()
        )
        for step in unsent:
            held = found.get(uuid.UUID(step["process_id"]))
            if held is not None:
                step["delivery"] = held.message
                step["delivery_waiting_s"] = round(held.age_s(), 1)
    return data
