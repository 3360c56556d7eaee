"""Who may see the dashboard, and the headers and tokens that keep it safe to open.

One ASGI middleware wraps every route, static files included:

* the ``Host`` header checked against the allowed hosts (when given), before
  anything else: a page that rebinds its own name to this server's address
  (DNS rebinding) gets 400, not the dashboard;
* authentication: optional HTTP basic auth (constant-time compare) and an
  ``auth`` hook given the request; 401 or 403 before any route runs (a hook that
  raises is a 403, logged); scopes other than HTTP and lifespan (websockets) are
  refused, since no route would check them;
* a CSRF token in a ``SameSite=Strict`` cookie, handed to templates, that every
  POST must echo (double submit), plus a same-origin check of ``Origin`` /
  ``Referer`` / ``Sec-Fetch-Site``: :func:`check_post`;
* headers on every response, errors included: a Content-Security-Policy with no
  inline script or style, ``Cache-Control: no-store``, no framing, no sniffing,
  and the server time (``Server-Timing``) that the benchmark reads.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import inspect
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flow_tracker.errors import UsageError

AuthHook = Callable[[Request], bool | Awaitable[bool]]

logger = logging.getLogger("flow_tracker.web")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

CSRF_COOKIE = "flow_tracker_csrf"
CSRF_FIELD = "csrf_token"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}


class SecurityMiddleware:
    """Authentication, CSRF cookie and security headers for the whole dashboard."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: AuthHook | None = None,
        basic_auth: tuple[str, str] | None = None,
        allowed_hosts: Sequence[str] | None = None,
        public_probes: bool = True,
    ) -> None:
        self.app = app
        self.auth = auth
        self.basic_auth = basic_auth
        self.public_probes = public_probes
        self.allowed_hosts = None if allowed_hosts is None else _host_patterns(allowed_hosts)
        self._auth_failed_logged = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check access, then run the app with the headers added to its response."""
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # Websockets and anything newer: no route serves them, none checks them.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        started = time.perf_counter()
        request = Request(scope)
        denied = await self._deny(request)
        token = request.cookies.get(CSRF_COOKIE, "")
        new_cookie = not _plausible_token(token)
        if new_cookie:
            token = secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf_token"] = token

        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode().lower() not in SECURITY_HEADERS
                ]
                headers.extend((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())
                elapsed = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={elapsed:.2f}".encode()))
                if new_cookie and denied is None:
                    headers.append((b"set-cookie", _csrf_cookie(scope, token).encode()))
                message = {**message, "headers": headers}
            await send(message)

        if denied is not None:
            await denied(scope, receive, send_with_headers)
            return
        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Starlette's outermost error middleware would answer with none of our
            # headers: answer here (it then only re-raises, for the server's log).
            if not response_started:
                error = PlainTextResponse("internal error", status_code=500)
                await error(scope, receive, send_with_headers)
            raise

    async def _deny(self, request: Request) -> Response | None:
        if self.public_probes and _is_probe(request):
            # Live and ready carry no data; an orchestrator's probe sends neither
            # credentials nor the dashboard's host name (see web/probes.py).
            return None
        if self.allowed_hosts is not None and not _host_allowed(
            request.headers.get("host", ""), self.allowed_hosts
        ):
            return PlainTextResponse("unknown host", status_code=400)
        if self.basic_auth is not None and not _basic_auth_ok(request, self.basic_auth):
            return PlainTextResponse(
                "authentication required",
                status_code=401,
                headers={"www-authenticate": 'Basic realm="flow-tracker", charset="UTF-8"'},
            )
        if self.auth is not None:
            try:
                allowed = self.auth(request)
                if inspect.isawaitable(allowed):
                    allowed = await allowed
            except Exception:
                # A hook that cannot decide denies (an anonymous user without the host
                # app's auth middleware often raises). Logged once: it is the app's bug.
                if not self._auth_failed_logged:
                    self._auth_failed_logged = True
                    logger.exception("flow-tracker dashboard: the auth hook raised; answering 403")
                allowed = False
            if not allowed:
                return PlainTextResponse("forbidden", status_code=403)
        return None


def _is_probe(request: Request) -> bool:
    """Whether ``request`` is a GET of ``/health/live`` or ``/health/ready`` of this app."""
    from flow_tracker.web.probes import PROBE_PATHS

    path = request.url.path[len(request.scope.get("root_path", "")) :]
    return request.method in ("GET", "HEAD") and path in PROBE_PATHS


def _host_patterns(hosts: Sequence[str]) -> tuple[str, ...]:
    patterns = tuple(_pattern(h) for h in hosts if h and h.strip())
    if not patterns:
        raise UsageError("allowed_hosts needs at least one host name (or '*')")
    return patterns


def _pattern(host: str) -> str:
    """An allowed host, spelled as :func:`_host_name` reads a ``Host`` header.

    Lower case, one final dot dropped, an IPv6 address in its shortest form
    (given with or without brackets).
    """
    pattern = host.strip().lower()
    literal = pattern[1:-1] if pattern.startswith("[") and pattern.endswith("]") else pattern
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv6Address(literal))
    return pattern[:-1] if pattern.endswith(".") and not pattern.endswith("..") else pattern


# A DNS name as browsers send it (IDNs as xn--): labels of letters, digits, "-" and
# "_" (service names), not starting or ending with "-", at most 63 characters each.
_LABEL = r"(?!-)[a-z0-9_-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")


def _is_port(text: str) -> bool:
    return bool(_PORT.fullmatch(text)) and int(text) <= 65_535


def _host_name(header: str) -> str:
    """The host a ``Host`` header names, without its port, or "" when it names none.

    Strict (RFC 9110 ``uri-host [":" port]``), so that no odd spelling can pass the
    allowed-hosts check as another host:

    * ``[IPv6]`` or ``[IPv6]:port`` only (``[::1]:8000`` -> ``::1``, in its
      shortest form); nothing else after the bracket, no zone;
    * an IPv4 address exactly (``127.0.0.1``; not ``127.1``, ``0x7f.0.0.1`` or
      ``127.0.0.1.``, which name no DNS host either: a name's last label is never
      all digits);
    * a DNS name, whose one final dot is dropped: ``localhost.`` is the fully
      qualified spelling of ``localhost``, the same host (RFC 1034 §3.1), and
      browsers send it as typed. Two dots, or an empty label, name nothing.
    """
    header = header.strip()
    if not header.isascii():
        # Browsers send international names as xn--; and lower() folds some
        # characters into ASCII letters (the Kelvin sign into "k").
        return ""
    header = header.lower()
    if header.startswith("["):
        literal, bracket, rest = header[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and _is_port(rest[1:]))):
            return ""
        if "%" in literal:  # a zone (fe80::1%eth0) means this machine's link, no host
            return ""
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            return ""
    name, colon, port = header.partition(":")
    if colon and not _is_port(port):
        return ""  # a second colon (an IPv6 address needs brackets), or no number
    fully_qualified = name.endswith(".")
    if fully_qualified:
        name = name[:-1]
    if len(name) > 253 or not _DNS_NAME.fullmatch(name):
        return ""
    if name.rpartition(".")[2].isdigit():
        if fully_qualified:
            return ""
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            return ""
    return name


def _host_allowed(header: str, patterns: Sequence[str]) -> bool:
    """Whether ``header`` names an allowed host: exact, ``*.example.com`` or ``*``."""
    name = _host_name(header)
    if not name:
        return False
    for pattern in patterns:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def serving_hosts(bind_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The hosts ``flow-tracker serve`` answers to: loopback names, its ``--host``, the extras.

    Binding every interface (``0.0.0.0``, ``::``) names no host: then only the
    loopback names and ``--allowed-host`` values are accepted.
    """
    hosts = list(LOOPBACK_HOSTS)
    if bind_host not in ("0.0.0.0", "::", ""):
        hosts.append(bind_host)
    hosts.extend(extra)
    return hosts


def _plausible_token(token: str) -> bool:
    return 32 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum()


def _csrf_cookie(scope: Scope, token: str) -> str:
    cookie: SimpleCookie = SimpleCookie()
    cookie[CSRF_COOKIE] = token
    morsel = cookie[CSRF_COOKIE]
    morsel["path"] = (scope.get("root_path") or "") + "/"
    morsel["httponly"] = True
    morsel["samesite"] = "Strict"
    if scope.get("scheme") == "https":
        morsel["secure"] = True
    return morsel.OutputString()


def _basic_auth_ok(request: Request, expected: tuple[str, str]) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Compare both parts, always, in constant time: no early exit on a wrong user.
    user_ok = hmac.compare_digest(user.encode(), expected[0].encode())
    password_ok = hmac.compare_digest(password.encode(), expected[1].encode())
    return user_ok & password_ok


def _origin_of(url: str) -> str:
    """The origin of ``url`` (a ``Referer``), or "" when it is no URL (``http://[bad``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from a page of this dashboard's origin."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    host = request.headers.get("host", "")
    expected = f"{request.url.scheme}://{host}".lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == expected
    referer = request.headers.get("referer")
    if referer:
        return _origin_of(referer) == expected
    return False


def check_post(request: Request, form: Mapping[str, Any]) -> str | None:
    """Why a POST must be refused (a CSRF token or origin problem), or None if it may go on."""
    if not same_origin(request):
        return "cross-origin request refused"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = str(form.get(CSRF_FIELD, ""))
    if not cookie or not sent or not hmac.compare_digest(cookie.encode(), sent.encode()):
        return "missing or invalid CSRF token; reload the page and try again"
    return None
