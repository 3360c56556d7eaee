"""Django's users as the dashboard's principals: the default hook of the Django mounts.

:func:`session_auth` reads Django's session cookie, finds the user as Django's
own ``AuthenticationMiddleware`` would (same session engine, same
authentication backends, same check that the password did not change since the
login), and gives the role the user's permissions grant. The ORM is synchronous:
all of it runs in one call of ``sync_to_async``, never on the event loop, which
would raise ``SynchronousOnlyOperation``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from asgiref.sync import sync_to_async
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from flow_tracker.permissions import Principal

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

#: The ASGI scope key where the mounts leave the site's own root path (the part of
#: ``root_path`` before the dashboard's prefix), for URLs Django builds in the hook.
SITE_ROOT_KEY = "flow_tracker.site_root_path"

#: Each Django permission and the role it grants, the strongest first.
ROLE_PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("flow_tracker.administer", "admin"),
    ("flow_tracker.operate", "operator"),
    ("flow_tracker.view_payloads", "reader"),
    ("flow_tracker.view_dashboard", "viewer"),
)

# What a session cookie may look like: Django's own keys are 32 letters and digits,
# the signed-cookies engine's a few hundred printable characters. Anything else
# (a NUL, a space, non-ASCII, a megabyte) is no session, and never reaches a query.
_MAX_SESSION_KEY = 4096


def principal_for_user(user: AbstractBaseUser | AnonymousUser | None) -> Principal | None:
    """The principal of a Django ``user``, or None when it may not see the dashboard.

    A superuser is an admin; anyone else gets the role of the strongest of the
    four ``flow_tracker.*`` permissions they hold, asked through ``has_perm``, so
    permissions granted through groups, or by another authentication backend,
    count as everywhere in Django. An anonymous or inactive user, or one without
    any of them, gets None. The principal's name is the user's ``get_username()``
    (what the admin shows; unique), which the audit log and a run's history keep.

    Call it from synchronous code (it may query the database); a hook of your
    own can wrap it in ``sync_to_async``.
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    name = str(user.get_username()).strip() or f"user {user.pk}"
    if getattr(user, "is_superuser", False):
        return Principal(name, role="admin")
    # has_perm is on PermissionsMixin; a custom user model may go without it.
    has_perm = getattr(user, "has_perm", None)
    if has_perm is None:
        return None
    for permission, role in ROLE_PERMISSIONS:
        if has_perm(permission):
            return Principal(name, role=role)
    return None


def _plausible_session_key(key: str) -> bool:
    return 0 < len(key) <= _MAX_SESSION_KEY and key.isascii() and key.isprintable()


def _user_of_session(session_key: str) -> Any:
    """Django's user of ``session_key``, found as ``AuthenticationMiddleware`` finds it."""
    from django.conf import settings
    from django.contrib import auth
    from django.http import HttpRequest

    engine = import_module(settings.SESSION_ENGINE)
    request = HttpRequest()
    request.session = engine.SessionStore(session_key)
    return auth.get_user(request)


def _decide(session_key: str | None, next_path: str, site_root: str) -> Principal | Response | None:
    """Who the session belongs to: a principal, a redirect to log in, or None (403).

    Runs in a worker thread. Outside Django's request cycle nothing closes the
    thread's database connection, so this does what Django does around each
    request: drop a connection that is broken or older than ``CONN_MAX_AGE``.
    """
    from django.db import close_old_connections

    if session_key is None or not _plausible_session_key(session_key):
        return _to_login(next_path, site_root)
    close_old_connections()
    try:
        user = _user_of_session(session_key)
        if not user.is_authenticated or not user.is_active:
            return _to_login(next_path, site_root)
        return principal_for_user(user)
    finally:
        close_old_connections()


def _to_login(next_path: str, site_root: str) -> Response:
    """A 302 to ``LOGIN_URL`` (a path, a URL or a URL pattern's name), ``?next=next_path``.

    Django's own ``redirect_to_login`` builds the address, so a ``LOGIN_URL``
    with a query of its own keeps it, as in the rest of the site. A pattern's
    name is reversed under the site's script prefix, as Django's handler sets it
    for its own requests (``FORCE_SCRIPT_NAME``, else the server's root path).
    """
    from django.conf import settings
    from django.contrib.auth.views import redirect_to_login
    from django.urls import get_script_prefix, set_script_prefix

    previous = get_script_prefix()
    set_script_prefix(settings.FORCE_SCRIPT_NAME or site_root or "/")
    try:
        location = redirect_to_login(next_path)["Location"]
    finally:
        set_script_prefix(previous)
    return RedirectResponse(str(location), status_code=302)


def _full_path(request: Request) -> str:
    """The request's path from the site's root (the mount's prefix included) and query."""
    # Escaped as Django's get_full_path() escapes it: what LoginView expects in next=.
    path = quote(request.scope["path"], safe="/:@&+$,-_.!~*'()")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


async def session_auth(request: Request) -> Principal | Response | None:
    """The default hook of :func:`~flow_tracker.contrib.django.mount`: Django's logged-in user.

    * no session, or an anonymous or inactive user: a 302 to ``settings.LOGIN_URL``
      with ``?next=`` the page asked for, as Django's ``login_required`` does;
    * a superuser: admin;
    * anyone else: the role of their ``flow_tracker.*`` permissions (see
      :func:`principal_for_user`), or None (403) without any.

    Usable on its own too: ``create_app(auth=session_auth)`` in any ASGI
    server that shares the site's cookies and settings.
    """
    from django.conf import settings

    session_key = request.cookies.get(settings.SESSION_COOKIE_NAME)
    # thread_sensitive: the ORM's calls go to the one thread Django gives them
    # (see asgiref), as they do from Django's own async views.
    site_root = str(request.scope.get(SITE_ROOT_KEY, ""))
    return await sync_to_async(_decide, thread_sensitive=True)(
        session_key, _full_path(request), site_root
    )
