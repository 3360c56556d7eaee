"""What changed since it last worked, on the dashboard: a run beside its last good run.

``/processes/{id}/compare`` (and ``?with=<id>`` to choose the baseline) draws the
two flow trees side by side with the differences marked, under a one-line
summary; ``/api/processes/{id}/compare`` answers the same comparison as JSON.
What differs is decided by :mod:`flow_tracker.comparison`; every payload value
shown comes out of its ``to_dict`` (through :func:`~flow_tracker.comparison.payload_display`,
or hidden from a principal without ``payloads:read``: :mod:`flow_tracker.web.hiding`).

An unknown id is a 404, an id that is no UUID in ``?with=`` or a run given as
its own baseline a 400; a run with no earlier good one is a page that says so.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from flow_tracker import comparison
from flow_tracker.errors import NotFoundError
from flow_tracker.ids import parse_id
from flow_tracker.records import ProcessRecord
from flow_tracker.status import Status
from flow_tracker.store import comparison as stored
from flow_tracker.store.engine import Store
from flow_tracker.web import hiding
from flow_tracker.web.context import dashboard_of, now, render
from flow_tracker.web.errors import json_response, problem
from flow_tracker.web.params import ParamError, clean

MAX_ROWS_SHOWN = 2_000
"""Flow rows a page draws; past it, the changed ones and the flows above them."""
WORDS = {"added": "new", "removed": "missing", "status": "status changed"}
"""How the page names a kind of change, where its name alone reads oddly."""


def _baseline_id(request: Request) -> uuid.UUID | None:
    """``?with=``: the baseline the reader chose, or None for the last good run."""
    raw = request.query_params.get("with")
    if raw is None or not raw.strip():
        return None
    text = clean(raw).strip()
    found = parse_id(text)
    if found is None:
        raise ParamError(f"with: {text[:60]!r} is not a process id (a UUID)")
    return found


def _comparison(request: Request) -> comparison.Comparison | None:
    """The comparison the request asks for; None when the run's id is no id at all."""
    pid = parse_id(request.path_params["process_id"])
    if pid is None:
        return None
    baseline = _baseline_id(request)
    return comparison.compare_runs(dashboard_of(request).store, pid, baseline)


def rows_shown(found: comparison.Comparison, most: int = MAX_ROWS_SHOWN) -> list[Any]:
    """The flows a page draws: all of them up to ``most``, else those that differ.

    Past ``most``, the flows that differ and the flows above each of them (so
    that every drawn row keeps its place in the tree), the first ``most`` of them.
    """
    if len(found.flows) <= most:
        return found.flows
    return found.differing_flows()[:most]


def _all_flows(request: Request) -> bool:
    """``?flows=all`` lists every flow; ``differing`` (the default) those that differ."""
    value = request.query_params.get("flows", "differing")
    if value not in ("all", "differing"):
        raise ParamError("flows must be 'all' or 'differing'")
    return value == "all"


def compare_page(request: Request) -> Response:
    """A run beside its baseline: summary, facts, steps, metadata, first log difference, flows."""
    try:
        found = _comparison(request)
    except NotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    if found is None:
        raise HTTPException(404, "no process with this id")
    display = hiding.display_for(request)
    shown = rows_shown(found)
    return render(
        request,
        "compare.html",
        cmp=found,
        c=hiding.comparison(request, found),
        rows=[flow.to_dict(display) for flow in shown],
        left_out=len(found.flows) - len(shown),
        chosen=str(found.baseline.id) if found.baseline and found.baseline_chosen else "",
        ratio=comparison.format_ratio,
        words=WORDS,
        now=now(),
    )


def compare_json(request: Request) -> Response:
    """``GET /api/processes/{id}/compare[?with=<id>][&flows=all]``: the comparison as JSON."""
    all_flows = _all_flows(request)
    try:
        found = _comparison(request)
    except NotFoundError as exc:
        return problem(404, str(exc))
    if found is None:
        return problem(404, "no process with this id")
    return json_response(hiding.comparison(request, found, all_flows=all_flows))


def offer(store: Store, process: ProcessRecord, moment: datetime | None = None) -> bool:
    """Whether a process's page offers "Compare with last good run".

    Every failed or lost run's page does; a completed or running one's when it
    took (or has run for) :data:`~flow_tracker.comparison.SLOWER_RATIO` times its
    last good run's duration or more, beyond the noise floor. That costs one
    probe of the baseline's index.
    """
    if process.status in (Status.FAILED, Status.LOST):
        return True
    took = process.duration_ms
    if process.status == Status.RUNNING and process.started_at is not None:
        took = ((moment or now()) - process.started_at).total_seconds() * 1000.0
    elif process.status != Status.COMPLETED:
        return False
    if took is None:
        return False
    baseline = stored.last_completed_before(store, process)
    if baseline is None:
        return False
    return comparison.timing(took, baseline.duration_ms) == comparison.Change.SLOWER
