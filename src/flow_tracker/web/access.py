"""The principal of a request: who the security middleware let in, as handlers read it.

:class:`~flow_tracker.web.security.SecurityMiddleware` authenticates each request
and leaves its :class:`~flow_tracker.permissions.Principal` in the request's
state; each route's permission is then checked in one place (the route table of
:mod:`flow_tracker.web.app`), and handlers and templates read it here.
"""

from __future__ import annotations

from starlette.requests import Request

from flow_tracker.permissions import Principal

PRINCIPAL_KEY = "principal"

OPEN = Principal("dashboard", role="admin", via="open")
"""Whoever opens a dashboard built without ``auth`` or ``basic_auth``.

Such an app (mounted in a host that guards it, or served on loopback) lets
everyone do everything, as it always did; its actions are kept as done by
``dashboard``. ``read_only`` still takes the actions away.
"""

PUBLIC = Principal("anonymous", permissions=frozenset(), via="public")
"""Who asks for a public probe (``/health/live``, ``/health/ready``): no one, allowed nothing."""


def principal_of(request: Request) -> Principal:
    """Who sent ``request``, as the security middleware authenticated them.

    Every request the dashboard serves passes the middleware, which always
    leaves a principal; one that somehow did not is allowed nothing.
    """
    principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else PUBLIC


def may_see_payloads(request: Request) -> bool:
    """Whether ``request``'s principal may read payload values (``payloads:read``)."""
    return principal_of(request).can("payloads:read")
