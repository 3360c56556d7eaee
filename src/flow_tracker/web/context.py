"""What every handler shares: the dashboard's options, the templates, ``render``.

Also the checks every action makes: read-only, form size, CSRF and origin.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from flow_tracker import __version__
from flow_tracker.store import rollups
from flow_tracker.store.engine import Store
from flow_tracker.web import formatting
from flow_tracker.web.access import principal_of
from flow_tracker.web.security import CSRF_FIELD, check_post
from flow_tracker.web.statistics_keeper import RollupState, StatisticsKeeper

HERE = Path(__file__).parent
MAX_FORM_BYTES = 16_384
# A workflow context or step result whose JSON is longer than this is read as a
# preview by the database (its first characters and its size), never parsed whole:
# a run whose context holds a million keys would cost a page hundreds of megabytes.
SHOWN_VALUE_LIMIT = 262_144
SEARCH_SLOTS = 1  # searches of the process list running at once, per app
SEARCH_WAIT = 1.0  # seconds a search waits for a slot


class SearchesBusyError(Exception):
    """Every search slot stayed taken: the dashboard answers 503, try again shortly."""


@dataclass(frozen=True)
class Dashboard:
    """What the handlers share: the database, the templates and the app's options."""

    store: Store
    templates: Jinja2Templates
    read_only: bool
    title: str
    refresh_seconds: int
    stale_after: float
    lost_after: float
    keeper: StatisticsKeeper | None = None
    search_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(SEARCH_SLOTS)
    )

    def rollup_state(self) -> RollupState | None:
        """The rollups' state kept warm in the background, or None: refresh in the request.

        While the keeper's first roll-up still runs (minutes on a large database
        never rolled up), pages read the rollups as stored rather than wait for it
        (or run their own under the query budget): what is not rolled up yet comes
        from the raw rows, so the numbers are exact either way.
        """
        if self.keeper is None:
            return None
        self.keeper.ensure_running()
        state = self.keeper.state
        return state if state is not None else rollups.stored_version(self.store)

    @contextlib.contextmanager
    def search_slot(self) -> Iterator[None]:
        """Hold one of the few slots searches share, or raise :class:`SearchesBusyError`.

        A broad search keeps a connection and a CPU busy for up to its budget;
        two at once already doubled every other page's time on a two-core
        machine (``make bench``). Searches beyond the slot wait up to a second
        for it, then are asked to come back.
        """
        if not self.search_slots.acquire(timeout=SEARCH_WAIT):
            raise SearchesBusyError()
        try:
            yield
        finally:
            self.search_slots.release()


def dashboard_of(request: Request) -> Dashboard:
    """The :class:`Dashboard` of the app that serves ``request``."""
    value: Dashboard = request.app.state.dashboard
    return value


def make_templates() -> Jinja2Templates:
    """The Jinja environment of the dashboard: autoescaped, strict, with our filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template is HTML; nothing user-supplied is marked safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    formatting.install(env)
    env.globals["csrf_field"] = CSRF_FIELD
    env.globals["version"] = __version__
    return Jinja2Templates(env=env)


def path_for(request: Request, name: str, **params: Any) -> str:
    """The path of this dashboard's route ``name``, under the prefix it is mounted at.

    Every link and redirect is built here. Not ``request.url_for``: Starlette
    resolves that from the outermost router, so a host app's own route named
    ``health`` or ``processes`` (or a second dashboard mounted beside this one)
    would take this dashboard's links. ``request.app`` is the innermost
    Starlette app serving the request, this dashboard; ``root_path`` is every
    prefix it is mounted under.
    """
    relative = request.app.router.url_path_for(name, **params)
    return str(request.scope.get("root_path", "")) + str(relative)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """Render ``template`` with what every page needs.

    Templates build every link with ``path(route name, **params)``: the route's
    path under the prefix the app is mounted at, so renaming a route cannot leave
    a link behind.
    """
    board = dashboard_of(request)

    def path(name: str, **params: Any) -> str:
        return path_for(request, name, **params)

    principal = principal_of(request)
    context.update(
        request=request,
        title=board.title,
        read_only=board.read_only,
        principal=principal,
        can=principal.can,
        csrf_token=request.scope.get("state", {}).get("csrf_token", ""),
        path=path,
        refresh_seconds=board.refresh_seconds,
    )
    response: Response = board.templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    return response


def now() -> datetime:
    """The dashboard's clock for "how long ago" (this host's, UTC)."""
    return datetime.now(timezone.utc)


def refuse(request: Request, status_code: int, message: str) -> Response:
    """The page of an action that was not done, and why."""
    return render(
        request, "error.html", status_code=status_code, heading="Not done", message=message
    )


def read_only_refusal(request: Request) -> Response:
    """What every action answers on a read-only dashboard."""
    return refuse(request, 403, "this dashboard is read-only")


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it is known to be over ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading; a
    chunked body is read only until it passes the limit. Nothing large is held.
    """
    declared = request.headers.get("content-length")
    # A few ASCII digits only: str.isdigit also says yes to "²", and int() refuses
    # that and numbers of over 4,300 digits.
    if declared is not None and not (
        declared.isascii() and declared.isdigit() and len(declared) < 19 and int(declared) <= limit
    ):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def checked_form(request: Request) -> tuple[dict[str, list[str]], Response | None]:
    """The form of an action, or the refusal to answer instead.

    Refused: a read-only dashboard (403), a body over :data:`MAX_FORM_BYTES` (413),
    a missing CSRF token or a cross-origin request (403).
    """
    if dashboard_of(request).read_only:
        return {}, read_only_refusal(request)
    body = await read_capped(request, MAX_FORM_BYTES)
    if body is None:
        return {}, refuse(request, 413, "form too large")
    form = parse_qs(body.decode("utf-8", "replace"))
    problem = check_post(request, {k: v[0] for k, v in form.items()})
    if problem:
        return {}, refuse(request, 403, problem)
    return form, None
