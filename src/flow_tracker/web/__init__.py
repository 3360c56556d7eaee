"""The web dashboard: an ASGI app (Starlette + Jinja2) to mount in a host app or serve alone.

Needs the ``web`` extra: ``pip install 'flow-tracker[web]'``.

Example:
    >>> from flow_tracker.web import create_app
    >>> app = create_app("postgresql://localhost/app")  # doctest: +SKIP
    >>> fastapi_app.mount("/jobs", app)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util

for _module in ("starlette", "jinja2"):
    if importlib.util.find_spec(_module) is None:  # pragma: no cover - depends on the install
        raise ImportError(
            f"the flow-tracker dashboard needs {_module}: pip install 'flow-tracker[web]'"
        )

from flow_tracker.permissions import ROLES, Principal  # noqa: E402
from flow_tracker.web.app import create_app  # noqa: E402
from flow_tracker.web.host_auth import from_scopes  # noqa: E402

__all__ = ["ROLES", "Principal", "create_app", "from_scopes"]
