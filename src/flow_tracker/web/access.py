"""The principal of a request, and the one place a route's permission is checked.

:class:`~flow_tracker.web.security.SecurityMiddleware` authenticates each request
and leaves its :class:`~flow_tracker.permissions.Principal` in the request's
state; handlers and templates read it here.
"""

from __future__ import annotations

from starlette.requests import Request

from flow_tracker.permissions import ADMIN, Principal

PRINCIPAL_KEY = "principal"


def principal_of(request: Request) -> Principal:
    """Who sent ``request``, as the security middleware authenticated them.

    An app built without any authentication (``create_app()`` alone, mounted in
    a host that guards it) treats everyone as admin, as it always did.
    """
    principal = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    return principal if isinstance(principal, Principal) else ADMIN


def may_see_payloads(request: Request) -> bool:
    """Whether ``request``'s principal may read payload values (``payloads:read``)."""
    return principal_of(request).can("payloads:read")
