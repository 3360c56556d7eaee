"""Each request's time budget: all of its database work ends within ``query_timeout``.

Bounding each query alone let a request wait for a pooled connection, then run
several queries, each up to the limit: behind a held table lock, page loads took
three times the budget and more. Within the budget, a request answers, or is
refused with a 503 and ``Retry-After`` (:mod:`flow_tracker.web.errors`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from flow_tracker.store.engine import time_budget


class TimeBudgetMiddleware:
    """Run every HTTP request within :func:`~flow_tracker.store.engine.time_budget`.

    The budget starts as the request arrives, so the wait for a worker thread
    counts too; Starlette hands the budget (a context variable) to the thread
    that runs the handler.
    """

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app for this request within its budget."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with time_budget(self.seconds):
            await self.app(scope, receive, send)
