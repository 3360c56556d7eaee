"""Health: its page, its JSON for probes, its two actions, and ``/metrics``.

The page shows lost, silent and stale jobs with requeue buttons, and the locks held.

Reading is :func:`flow_tracker.health` and :func:`flow_tracker.locks.held_locks`;
the two actions (reap now, requeue) are POSTs with the CSRF token and a
same-origin check, refused in read-only mode, like cleanup.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from flow_tracker import recovery
from flow_tracker.delivery import waiting_for
from flow_tracker.locks import held_locks
from flow_tracker.status import Status
from flow_tracker.store import jobs as stored_jobs
from flow_tracker.store import queries
from flow_tracker.web.context import checked_form, dashboard_of, now, path_for, refuse, render
from flow_tracker.web.params import clamp_int

LOST_SHOWN = 50
REASON_SHOWN = 300  # characters of each refusal reason the notice repeats from the URL


def _lost_not_requeued(request: Request) -> list[Any]:
    """The newest lost jobs that were not enqueued again."""
    rows = stored_jobs.lost_not_requeued(dashboard_of(request).store, LOST_SHOWN)
    return [queries.process_from_row(row) for row in rows]


def health_page(request: Request) -> Response:
    """Health now, the lost jobs not requeued, the locks held."""
    board = dashboard_of(request)
    report = recovery.health(store=board.store)
    notice = {
        key: clamp_int(request.query_params.get(key), 0, 0, 10**9)
        for key in ("reaped", "steps_sent", "steps_waiting", "requeued", "refused")
        if key in request.query_params
    }
    if "reaped" in notice:
        # The reap action's redirect names all three; a link written by hand may not.
        notice.setdefault("steps_sent", 0)
        notice.setdefault("steps_waiting", 0)
    if "requeued" in notice:
        # The requeue action's redirect names both; a link written by hand may not.
        notice.setdefault("refused", 0)
    return render(
        request,
        "health.html",
        status_code=200,
        report=report,
        lost=_lost_not_requeued(request),
        locks=held_locks(board.store),
        notice=notice,
        reasons=[r[:REASON_SHOWN] for r in request.query_params.getlist("reason")[:10]],
        waiting=[w[:REASON_SHOWN] for w in request.query_params.getlist("waiting")[:10]],
        now=now(),
        live=True,
    )


def health_json(request: Request) -> Response:
    """``GET /api/health``: the health report; 503 when unhealthy (for probes)."""
    report = recovery.health(store=dashboard_of(request).store)
    return JSONResponse(report.to_dict(), status_code=200 if report.healthy else 503)


def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text (needs prometheus-client; 404 without it)."""
    try:
        from flow_tracker.exporters import prometheus
    except ImportError:
        return PlainTextResponse(
            "install prometheus-client (pip install 'flow-tracker[prometheus]') for /metrics\n",
            status_code=404,
        )
    store = dashboard_of(request).store
    body, content_type = prometheus.render(lambda: store)
    return Response(body, media_type=content_type)


def _back(request: Request, **values: Any) -> Response:
    # Empty lists (no reason, nothing waiting) leave no key behind.
    query = urlencode({key: v for key, v in values.items() if v != []}, doseq=True)
    return RedirectResponse(path_for(request, "health") + "?" + query, status_code=303)


async def reap_now(request: Request) -> Response:
    """``POST /health/reap``: run the reaper once."""
    _, refused = await checked_form(request)
    if refused is not None:
        return refused
    store = dashboard_of(request).store
    result = await run_in_threadpool(lambda: recovery.reap(store=store))
    # Steps queued again are "sent" only when published here; the others wait in
    # the outbox for a worker of their queue, and the notice says so.
    return _back(
        request,
        reaped=len(result.lost),
        steps_sent=result.workflow_steps_sent,
        steps_waiting=result.workflow_steps_waiting,
        waiting=[waiting_for(*result.waiting_for)] if result.workflow_steps_waiting else [],
    )


async def requeue_now(request: Request) -> Response:
    """``POST /health/requeue``: requeue one process (``process_id``) or every lost job."""
    form, refused = await checked_form(request)
    if refused is not None:
        return refused
    store = dashboard_of(request).store
    ids: list[uuid.UUID] = []
    for raw in form.get("process_id", [])[:LOST_SHOWN]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            return refuse(request, 400, "not a process id")
    if form.get("all") == ["lost"]:
        ids = await run_in_threadpool(
            lambda: recovery.requeue_candidates(Status.LOST, store=store, limit=LOST_SHOWN)
        )
    if not ids:
        return refuse(request, 400, "nothing to requeue")
    results = await run_in_threadpool(lambda: recovery.requeue(ids, store=store))
    # Each result says what it did: sent, waiting in the outbox for a worker of its
    # queue (the job stays lost until then), or refused — never "enqueued" unsent.
    waiting = Counter(r.message for r in results if r.outcome == "waiting")
    refused_ones = [r for r in results if not r.ok and r.outcome != "waiting"]
    return _back(
        request,
        requeued=sum(r.ok for r in results),
        waiting=[f"{count} {message}" for message, count in sorted(waiting.items())],
        refused=len(refused_ones),
        reason=sorted(
            {f"{r.outcome}: {r.reason}" if r.reason else r.outcome for r in refused_ones}
        ),
    )
