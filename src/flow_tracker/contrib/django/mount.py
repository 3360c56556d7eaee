"""The dashboard under a prefix of a Django site, for ASGI and for WSGI.

Requests under the prefix go to the dashboard, everything else to the site as
it was (the admin, the views, the static files). The dashboard learns its
prefix the way ASGI says (``root_path``; ``SCRIPT_NAME`` for WSGI), so its links,
its redirects and the path of its CSRF cookie all stay under it, whatever runs
around it: Django's own handler, Channels' ``ProtocolTypeRouter``, or a server
started with a root path of its own.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from flow_tracker.contrib.django.users import SITE_ROOT_KEY, session_auth
from flow_tracker.errors import UsageError
from flow_tracker.web import create_app

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# A prefix is a path of plain segments: letters, digits and - . _ ~ (no query, no
# percent-escapes, no empty or dot segments), so it reads the same in a URL, in
# an ASGI path and in a WSGI PATH_INFO.
#: The site's ASGI app, typed loosely: Django's handler types its scope as a dict,
#: Channels' routers as their own mappings; any ASGI callable will do.
SiteApp = Callable[[Any, Any, Any], Awaitable[None]]

_SEGMENT = r"[A-Za-z0-9._~-]+"
_PREFIX = re.compile(rf"(?:/{_SEGMENT})+")


def _clean_prefix(prefix: str) -> str:
    """``prefix`` as ``/jobs`` (one leading slash, none trailing), or a UsageError."""
    cleaned = prefix.rstrip("/") if isinstance(prefix, str) else ""
    segments = cleaned.split("/")[1:]
    if not _PREFIX.fullmatch(cleaned) or any(s in (".", "..") for s in segments):
        raise UsageError(
            f"the dashboard's prefix must be a path such as '/jobs/', not {str(prefix)[:80]!r} "
            "(and not '/': the site needs the rest)"
        )
    return cleaned


def _dashboard(create_app_kwargs: dict[str, Any]) -> Starlette:
    """``create_app(**create_app_kwargs)``, with Django's users unless ``auth`` is given."""
    create_app_kwargs.setdefault("auth", session_auth)
    return create_app(**create_app_kwargs)


def _route_path(path: str, root_path: str) -> str:
    """``path`` from the site's root: without the server's ``root_path``, when it has it.

    ASGI servers put the root path in front of ``path``; some older ones do not.
    Django reads it both ways; so does this.
    """
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path) :]
    return path


def _to_prefix(prefix_path: str, query: str) -> RedirectResponse:
    """307 from ``/jobs`` to ``/jobs/``: a path only, never built from the ``Host`` header."""
    location = quote(prefix_path, safe="/:@&+$,-_.!~*'()") + "/"
    return RedirectResponse(location + ("?" + query if query else ""), status_code=307)


class PrefixMount:
    """An ASGI app: ``prefix/…`` to the dashboard, anything else to the site.

    Built by :func:`mount`; ``dashboard`` is the app it dispatches to.
    """

    def __init__(self, site: SiteApp, prefix: str, dashboard: Starlette) -> None:
        self.site = site
        self.prefix = _clean_prefix(prefix)
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the request to the dashboard or to the site."""
        if scope["type"] != "http":
            # Lifespan and websockets are the site's: the dashboard serves neither.
            await self.site(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        route = _route_path(scope["path"], root_path)
        if route == self.prefix:
            query = scope.get("query_string", b"").decode("latin-1")
            await _to_prefix(root_path + self.prefix, query)(scope, receive, send)
            return
        if not route.startswith(self.prefix + "/"):
            await self.site(scope, receive, send)
            return
        mounted = root_path + self.prefix
        child = dict(scope)
        child.update(
            root_path=mounted,
            path=root_path + route,  # the full path, root path included, as ASGI says
            # Starlette builds links from these; a Starlette host's router, left in
            # the scope, would resolve the dashboard's route names among its own.
            app_root_path=mounted,
        )
        child[SITE_ROOT_KEY] = root_path
        child.pop("router", None)
        await self.dashboard(child, receive, send)


def mount(asgi_app: SiteApp, prefix: str, **create_app_kwargs: Any) -> PrefixMount:
    """The site's ASGI app with the dashboard answering under ``prefix``.

    Example (``mysite/asgi.py``, with ``"flow_tracker.contrib.django"`` in
    ``INSTALLED_APPS``)::

        from django.core.asgi import get_asgi_application
        from flow_tracker.contrib.django import mount

        application = mount(get_asgi_application(), "/jobs/")

    Args:
        asgi_app: the site (``get_asgi_application()``, or Channels'
            ``ProtocolTypeRouter``); everything outside ``prefix`` goes there
            untouched, and so do lifespan events and websockets.
        prefix: where the dashboard answers, e.g. ``"/jobs/"``; ``"/jobs"`` itself
            redirects to ``"/jobs/"``.
        **create_app_kwargs: passed to :func:`flow_tracker.web.create_app`
            (``database_url``, ``read_only``, ``title``...). Without ``auth``, the
            dashboard's users are the site's: see
            :func:`~flow_tracker.contrib.django.users.session_auth`. ``auth=None``
            lets everyone in as admin: only behind a guard of your own.

    Returns:
        An ASGI app to serve in place of ``asgi_app``.
    """
    clean = _clean_prefix(prefix)  # refused before a database is opened
    return PrefixMount(asgi_app, clean, _dashboard(create_app_kwargs))


class _SiteRoot:
    """Tells the dashboard's hook the site's root under WSGI: ``root_path`` less the prefix.

    a2wsgi makes ``root_path`` of ``SCRIPT_NAME`` (the site's, then the prefix)
    and passes no other environ key on.
    """

    def __init__(self, dashboard: ASGIApp, prefix: str) -> None:
        self.dashboard = dashboard
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root_path = str(scope.get("root_path", ""))
        if root_path.endswith(self.prefix):
            scope = {**scope, SITE_ROOT_KEY: root_path[: -len(self.prefix)]}
        await self.dashboard(scope, receive, send)


class WsgiPrefixMount:
    """A WSGI app: ``prefix/…`` to the dashboard (through a2wsgi), anything else to the site.

    Built by :func:`wsgi_mount`; ``dashboard`` is the dashboard's WSGI adapter.
    """

    def __init__(self, site: WSGIApplication, prefix: str, dashboard: WSGIApplication) -> None:
        self.site = site
        self.prefix = _clean_prefix(prefix)
        self.dashboard = dashboard

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Send the request to the dashboard or to the site."""
        path_info: str = environ.get("PATH_INFO", "") or ""
        script_name: str = environ.get("SCRIPT_NAME", "") or ""
        if path_info == self.prefix:
            # WSGI strings are bytes as latin-1; a URL path is UTF-8 (PEP 3333).
            where = (script_name + self.prefix).encode("latin-1").decode("utf-8", "replace")
            response = _to_prefix(where, environ.get("QUERY_STRING", ""))
            status = f"{response.status_code} Temporary Redirect"
            start_response(status, [(k.decode(), v.decode()) for k, v in response.raw_headers])
            return [bytes(response.body)]
        if not path_info.startswith(self.prefix + "/"):
            return self.site(environ, start_response)
        # A copy: the site's middleware may keep the environ it saw, and the next
        # request must not find SCRIPT_NAME moved.
        child = dict(environ)
        child["SCRIPT_NAME"] = script_name + self.prefix
        child["PATH_INFO"] = path_info[len(self.prefix) :]
        return self.dashboard(child, start_response)


def wsgi_mount(wsgi_app: WSGIApplication, prefix: str, **create_app_kwargs: Any) -> WsgiPrefixMount:
    """The site's WSGI app with the dashboard answering under ``prefix``.

    The dashboard is an ASGI app; ``a2wsgi`` runs it (``pip install
    'flow-tracker[django]'`` brings it). Example (``mysite/wsgi.py``)::

        from django.core.wsgi import get_wsgi_application
        from flow_tracker.contrib.django import wsgi_mount

        application = wsgi_mount(get_wsgi_application(), "/jobs/")

    Arguments as for :func:`mount`.
    """
    clean = _clean_prefix(prefix)
    try:
        from a2wsgi import ASGIMiddleware
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(
            "wsgi_mount runs the dashboard through a2wsgi: pip install 'flow-tracker[django]'"
        ) from None
    site_root = _SiteRoot(_dashboard(create_app_kwargs), clean)
    # a2wsgi types its ASGI app narrowly (its own scope TypedDicts); Starlette's is wider.
    dashboard = cast("WSGIApplication", ASGIMiddleware(site_root))  # type: ignore[arg-type]
    return WsgiPrefixMount(wsgi_app, clean, dashboard)
