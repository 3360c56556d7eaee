"""What every handler shares: the :class:`Dashboard` options, the templates, ``render``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from flow_tracker import __version__
from flow_tracker.store.engine import Store
from flow_tracker.web import formatting
from flow_tracker.web.security import CSRF_FIELD
from flow_tracker.web.statistics_keeper import RollupState, StatisticsKeeper

HERE = Path(__file__).parent


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

    def rollup_state(self) -> RollupState | None:
        """The rollups' state kept warm in the background, or None: refresh in the request."""
        if self.keeper is None:
            return None
        self.keeper.ensure_running()
        return self.keeper.state


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


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """Render ``template`` with what every page needs."""
    board = dashboard_of(request)
    base = request.scope.get("root_path", "")
    context.update(
        request=request,
        title=board.title,
        read_only=board.read_only,
        csrf_token=request.scope.get("state", {}).get("csrf_token", ""),
        root=base,
        refresh_seconds=board.refresh_seconds,
    )
    response: Response = board.templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    return response
