"""Payload hiding: what a principal without ``payloads:read`` is shown of a value.

The one place that decides and applies it. A *payload* is what a job works on:
metadata values (their keys stay), job arguments, log entries' ``data``, error
messages and tracebacks (the error's class stays), a workflow's context, its
steps' results (resolve results too) and the values a comparison shows. Each
reads :data:`HIDDEN` in pages and in JSON; a JSON object whose payload fields
were hidden also says ``"hidden": true`` (the top of an answer, and each item
of a list). A field that holds nothing (no error, no arguments, no result)
stays ``null``: there is nothing to hide. Names, statuses, timings, progress,
log messages, error classes, categories and ids stay visible; so do a run's
tags and idempotency key (labels its starter chose to find it by, as a name or
a category, and which the run list filters on) and the keys of step results a
comparison lists (as metadata keys).

Handlers pass what they read through these functions *before* a template or
``json_response`` sees it, so a template that prints a field it should not
still prints ``[hidden]``. The search and the metadata filters of the process
list are refused (403) instead: filtering on a hidden value would confirm it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request

from flow_tracker.actors import current_actor
from flow_tracker.comparison import Comparison, Display, payload_display
from flow_tracker.records import ErrorInfo, FlowRecord, LogEntryRecord, ProcessRecord, Transition
from flow_tracker.status import Status
from flow_tracker.store import audit
from flow_tracker.web.access import may_see_payloads
from flow_tracker.web.context import dashboard_of
from flow_tracker.web.params import payload_filters
from flow_tracker.workflows.status import StepStatus, WorkflowStatus

HIDDEN = "[hidden]"
"""What a hidden value reads, in pages and in JSON."""
PERMISSION = "payloads:read"

# State changes whose reason is ours (a requeue, a reaper's verdict, a manual action's
# "who and why"): every other reason may be an error's message ("failed" and
# "retrying" store "ErrorClass: message" when the code gave no reason of its own).
_OWN_REASONS = frozenset({"requeued", "retried", "resolved", Status.LOST.value, "running"})


def hides(request: Request) -> bool:
    """Whether ``request``'s principal gets payloads hidden (it lacks ``payloads:read``)."""
    return not may_see_payloads(request)


def _present(value: Any) -> Any:
    """``value`` hidden when there is one; None (nothing recorded) stays None."""
    return None if value is None else HIDDEN


def metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """The same keys, every value hidden."""
    return dict.fromkeys(values, HIDDEN)


def error(info: ErrorInfo | None) -> ErrorInfo | None:
    """The error's class; its message and traceback hidden."""
    if info is None:
        return None
    return ErrorInfo(info.type, HIDDEN, _present(info.traceback))


def step_error(text: str | None) -> str | None:
    """A step's ``ErrorClass: message`` as ``ErrorClass: [hidden]``."""
    if text is None:
        return None
    kind, sep, _message = text.partition(": ")
    return f"{kind}: {HIDDEN}" if sep and kind else HIDDEN


def _log(entry: LogEntryRecord) -> LogEntryRecord:
    return dataclasses.replace(entry, data=_present(entry.data))


def _flow(flow: FlowRecord) -> FlowRecord:
    return dataclasses.replace(
        flow,
        metadata=metadata(flow.metadata),
        error=error(flow.error),
        children=[_flow(child) for child in flow.children],
        logs=[_log(entry) for entry in flow.logs],
    )


def _transition(change: Transition) -> Transition:
    if change.reason is None or change.status in _OWN_REASONS:
        return change
    return dataclasses.replace(change, reason=HIDDEN)


def process(record: ProcessRecord) -> ProcessRecord:
    """The process with every payload hidden, its flows, logs and history too."""
    return dataclasses.replace(
        record,
        metadata=metadata(record.metadata),
        error=error(record.error),
        job_args=_present(record.job_args),
        flows=[_flow(flow) for flow in record.flows],
        logs=[_log(entry) for entry in record.logs],
        history=[_transition(change) for change in record.history],
    )


def processes(request: Request, records: Iterable[ProcessRecord]) -> list[ProcessRecord]:
    """``records`` as ``request``'s principal may see them."""
    if hides(request):
        return [process(record) for record in records]
    return list(records)


def process_for(request: Request, record: ProcessRecord) -> ProcessRecord:
    """``record`` as ``request``'s principal may see it."""
    return process(record) if hides(request) else record


def mark(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``"hidden": true`` when ``request``'s principal gets payloads hidden."""
    if hides(request):
        data["hidden"] = True
    return data


def overview(request: Request, summary: Any) -> Any:
    """The overview (``web.statistics.Overview``) with its recent failures' errors hidden."""
    if not hides(request):
        return summary
    return dataclasses.replace(
        summary, recent_failures=[process(p) for p in summary.recent_failures]
    )


# -- workflows ----------------------------------------------------------------------------


def _step(step: StepStatus) -> StepStatus:
    return dataclasses.replace(step, result=_present(step.result), error=step_error(step.error))


def workflow(request: Request, run: WorkflowStatus) -> WorkflowStatus:
    """The run as ``request``'s principal may see it: context, results and errors hidden."""
    if not hides(request):
        return run
    return dataclasses.replace(
        run,
        context=_present(run.context),
        steps={name: _step(step) for name, step in run.steps.items()},
    )


def workflow_dict(request: Request, shown: dict[str, Any]) -> dict[str, Any]:
    """A run as ``manage.shown`` gives it, as ``request``'s principal may see it (marked)."""
    if not hides(request):
        return shown
    if "context" in shown:
        shown["context"] = _present(shown["context"])
    for step in shown.get("steps") or ():
        step["result"] = _present(step.get("result"))
        step["error"] = step_error(step.get("error"))
    shown["hidden"] = True
    return shown


def context_for(request: Request, value: Any) -> Any:
    """A workflow context (a start's echo) as ``request``'s principal may see it."""
    return _present(value) if hides(request) else value


# -- comparisons --------------------------------------------------------------------------


def _hide_all(value: Any, key: str | None = None) -> Any:
    """A comparison's ``display`` that shows no value at all."""
    del value, key
    return HIDDEN


def display_for(request: Request) -> Display:
    """How a comparison shows payload values to ``request``'s principal."""
    return _hide_all if hides(request) else payload_display()


def comparison(request: Request, found: Comparison, *, all_flows: bool = False) -> dict[str, Any]:
    """``found.to_dict`` as ``request``'s principal may see it (marked when hidden).

    Every value a comparison shows passes through its ``display``; a step's error
    is ``ErrorClass: message`` as one value, so its class is put back here.
    """
    data = found.to_dict(display_for(request), all_flows=all_flows)
    if hides(request):
        for row, step in zip(data.get("steps") or (), found.steps or (), strict=False):
            row["error"] = step_error(step.error)
        data["hidden"] = True
    return data


# -- searches -----------------------------------------------------------------------------


_FILTER_WORDS = {"q": "searching", "meta": "filtering by metadata"}


def refused_filters(request: Request) -> str | None:
    """Why the process list cannot answer ``request``'s filters, or None when it can.

    A search (``q``) or a metadata filter (``meta``) answers which processes hold
    a value: for a principal who may not read payloads, that would confirm a
    hidden value one guess at a time. A refusal is kept in the audit log, as
    the request's actor, naming the parameters and never their values (a guess
    may be the secret itself).
    """
    if not hides(request):
        return None
    used = payload_filters(request.query_params)
    if not used:
        return None
    named = " and ".join(f"{name}=" for name in used)
    path = request.url.path[len(request.scope.get("root_path", "")) :]
    target = f"{path} ({named})"
    audit.record_refusal(
        dashboard_of(request).store, action=PERMISSION, target=target, actor=current_actor()
    )
    doing = " and ".join(_FILTER_WORDS.get(name, name) + f" ({name}=)" for name in used)
    return (
        f"{doing} {'are' if len(used) > 1 else 'is'} refused without the {PERMISSION} "
        "permission: a match would confirm a hidden value. Filter by status, name, "
        "category or time instead."
    )
