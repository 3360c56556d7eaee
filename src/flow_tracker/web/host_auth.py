"""Ready auth hooks for host apps: who the host app says the user is, as a principal.

:func:`from_scopes` serves Starlette and FastAPI apps whose
``AuthenticationMiddleware`` grants scopes: the dashboard's permissions are
``resource:action`` strings, valid scopes as they are, so a host app grants
``"runs:read"`` or ``"jobs:requeue"`` beside its own.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from flow_tracker.errors import UsageError
from flow_tracker.permissions import PERMISSIONS, ROLES, Principal

ScopesHook = Callable[[Request], Principal | Response | None]


def _name_of(user: object) -> str:
    """What the audit log calls ``user``: its ``display_name``, else its ``identity``."""
    for attribute in ("display_name", "identity"):
        try:
            value = getattr(user, attribute, None)
        except NotImplementedError:  # Starlette's BaseUser leaves both to subclasses
            continue
        if isinstance(value, str) and value.strip():
            return value
    raise UsageError(
        f"the authenticated {type(user).__name__} has neither a display_name nor an identity; "
        "the dashboard needs a name to show who did what"
    )


def _principal(name: str, granted: frozenset[str]) -> Principal:
    """A principal holding ``granted``, named by its role when it is exactly a preset's."""
    for role, permissions in ROLES.items():
        if granted == permissions:
            return Principal(name, role=role)
    return Principal(name, permissions=granted)


def from_scopes(*, login_url: str | None = None) -> ScopesHook:
    """An auth hook: the user and scopes a Starlette ``AuthenticationMiddleware`` set.

    The principal may do what its scopes name among the dashboard's permissions
    (``runs:read``, ``payloads:read``, ``jobs:requeue``... see
    :data:`~flow_tracker.permissions.PERMISSIONS`); the host app's other scopes
    (``"authenticated"``, ``"billing:write"``) are ignored, and a user with none
    of the dashboard's gets 403. Grant a whole role with ``ROLES["operator"]``.
    Its name is the user's ``display_name`` (else ``identity``).

    Args:
        login_url: where to send a visitor who is not logged in, with ``next=``
            the page asked for (path and query); None answers 403.

    Returns:
        A hook for :func:`~flow_tracker.web.create_app`'s ``auth``. Without an
        ``AuthenticationMiddleware`` around the dashboard it raises (a 403,
        logged once, naming what is missing).

    Example::

        from fastapi import FastAPI
        from starlette.authentication import AuthCredentials, AuthenticationBackend
        from starlette.authentication import SimpleUser
        from starlette.middleware.authentication import AuthenticationMiddleware

        from flow_tracker.web import ROLES, create_app, from_scopes

        class Users(AuthenticationBackend):
            async def authenticate(self, conn):
                user = await your_user_of(conn)  # a session, a JWT, an API key...
                if user is None:
                    return None
                scopes = ["authenticated", *ROLES["operator" if user.is_ops else "viewer"]]
                return AuthCredentials(scopes), SimpleUser(user.email)

        app = FastAPI()
        app.mount("/jobs", create_app(auth=from_scopes(login_url="/login")))
        app.add_middleware(AuthenticationMiddleware, backend=Users())
    """

    def hook(request: Request) -> Principal | Response | None:
        if "user" not in request.scope or "auth" not in request.scope:
            raise UsageError(
                "from_scopes() reads request.user and request.auth: add Starlette's "
                "AuthenticationMiddleware to the app that mounts the dashboard"
            )
        user = request.scope["user"]
        if not getattr(user, "is_authenticated", False):
            return _to_login(request, login_url) if login_url is not None else None
        scopes = getattr(request.scope["auth"], "scopes", None) or ()
        granted = frozenset(s for s in scopes if isinstance(s, str) and s in PERMISSIONS)
        if not granted:
            return None
        return _principal(_name_of(user), granted)

    return hook


def _to_login(request: Request, login_url: str) -> Response:
    """A 302 to ``login_url`` with ``next=`` the path (prefix included) and query asked for."""
    # One leading slash: "//evil.example/x" as ``next`` would send a login page
    # that follows it blindly to another site.
    path = quote("/" + request.scope["path"].lstrip("/"), safe="/:@&+$,-_.!~*'()")
    query = request.scope.get("query_string", b"").decode("latin-1")
    wanted = f"{path}?{query}" if query else path
    separator = "&" if "?" in login_url else "?"
    return RedirectResponse(
        f"{login_url}{separator}{urlencode({'next': wanted}, safe='/')}", status_code=302
    )
