"""Who may see the dashboard, and the headers and tokens that keep it safe to open.

One ASGI middleware wraps every route, static files included:

* the ``Host`` header checked against the allowed hosts (when given), before
  anything else: a page that rebinds its own name to this server's address
  (DNS rebinding) gets 400, not the dashboard;
* authentication, which makes the request's
  :class:`~flow_tracker.permissions.Principal` (what each route then checks, in
  :mod:`flow_tracker.web.app`): an API token (``Authorization: Bearer ft_…``, on
  ``/api/*`` and ``/metrics`` only), HTTP basic auth with one or more users, each
  with a role (constant-time compare), and an ``auth`` hook given the request;
  401 or 403 before any route runs (a hook that raises is a 403, logged once);
  scopes other than HTTP and lifespan (websockets) are refused, since no route
  would check them;
* the acting actor (:func:`flow_tracker.actors.acting_as`) for the request, so
  the library code its handler calls records who acted, from where;
* a CSRF token in a ``SameSite=Strict`` cookie, handed to templates, that every
  POST must echo (double submit), plus a same-origin check of ``Origin`` /
  ``Referer`` / ``Sec-Fetch-Site``: :func:`check_post`;
* headers on every response, errors included: a Content-Security-Policy with no
  inline script or style, ``Cache-Control: no-store``, no framing, no sniffing,
  and the server time (``Server-Timing``) that the benchmark reads.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import inspect
import ipaddress
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flow_tracker.actors import Actor, acting_as
from flow_tracker.errors import UsageError
from flow_tracker.permissions import ROLES, Principal
from flow_tracker.store.engine import Store
from flow_tracker.web.access import OPEN, PRINCIPAL_KEY, PUBLIC

AuthResult: TypeAlias = Principal | bool | Response | None
"""What an ``auth`` hook returns: a :class:`Principal` (used as is), ``True``
(admin), ``None`` or ``False`` (403), or a Starlette ``Response`` (sent as it
is: a redirect to the host app's login page)."""

AuthHook: TypeAlias = Callable[[Request], AuthResult | Awaitable[AuthResult]]
"""An ``auth`` hook: called with each request, sync or async."""

BasicUser: TypeAlias = tuple[str, str] | tuple[str, str, str]
"""One basic-auth user: ``(user, password)`` (admin) or ``(user, password, role)``."""

BasicAuth: TypeAlias = BasicUser | Sequence[BasicUser]
"""``create_app(basic_auth=...)``: one ``(user, password)`` pair, or a list of users."""

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

#: The longest ``Authorization`` header read; a longer one is refused unread.
MAX_AUTHORIZATION = 8_192
#: What an API token starts with: a ``Bearer`` credential without it is the host app's.
TOKEN_PREFIX = "ft_"
#: The most a token may do, whatever its stored role says: no admin, no token management.
TOKEN_CEILING = ROLES["operator"]
BASIC_CHALLENGE = 'Basic realm="flow-tracker", charset="UTF-8"'
BEARER_CHALLENGE = 'Bearer realm="flow-tracker"'
BAD_TOKEN_CHALLENGE = 'Bearer realm="flow-tracker", error="invalid_token"'
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}")
# Printable ASCII and spaces: what a well-formed Authorization header holds.
_HEADER_TEXT = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True)
class _BasicUser:
    """A configured basic-auth user: digests to compare against, and who it is once in."""

    user_digest: bytes
    password_digest: bytes
    principal: Principal


def _digest(text: str) -> bytes:
    # Fixed-length digests: compare_digest then takes the same time whatever the
    # lengths of what was sent and what is expected.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def basic_users(basic_auth: object) -> tuple[_BasicUser, ...]:
    """The users of ``create_app(basic_auth=...)``, or a :class:`UsageError` for a bad shape.

    ``("user", "password")`` is one admin (as it always was); a list of
    ``(user, password)`` and ``(user, password, role)`` tuples gives several
    users, each with a role of :data:`~flow_tracker.permissions.ROLES` (admin
    when left out).
    """
    shape = (
        "basic_auth is (user, password) or a list of (user, password) / "
        "(user, password, role) tuples"
    )
    if isinstance(basic_auth, (str, bytes)) or not isinstance(basic_auth, Sequence):
        raise UsageError(f"{shape}, not {type(basic_auth).__name__}")
    entries: list[Any]
    if basic_auth and all(isinstance(part, str) for part in basic_auth):
        entries = [tuple(basic_auth)]  # the single (user, password) pair of old
    else:
        entries = list(basic_auth)
    if not entries:
        raise UsageError(f"{shape}; the list is empty")
    users: list[_BasicUser] = []
    seen: set[str] = set()
    for entry in entries:
        if (
            isinstance(entry, (str, bytes))
            or not isinstance(entry, Sequence)
            or len(entry) not in (2, 3)
            or not all(isinstance(part, str) for part in entry)
        ):
            # Named by its place, never shown: it may hold a password.
            raise UsageError(f"{shape}; user {len(users) + 1} of the list is neither")
        user, password = entry[0], entry[1]
        role = entry[2] if len(entry) == 3 else "admin"
        if not user or not password:
            raise UsageError("basic_auth needs a non-empty user and password for every user")
        if ":" in user:
            # RFC 7617: the user name ends at the first colon of what a browser sends.
            raise UsageError(f"a basic_auth user name has no ':', unlike {user[:80]!r}")
        if user in seen:
            raise UsageError(f"basic_auth names the user {user[:80]!r} twice")
        seen.add(user)
        principal = Principal(user, role=role, via=f"basic:{user}")  # UsageError: unknown role
        users.append(_BasicUser(_digest(user), _digest(password), principal))
    return tuple(users)


def parse_basic_auth(text: str) -> list[tuple[str, str, str]]:
    """The users of ``--basic-auth`` / ``FLOW_TRACKER_BASIC_AUTH``: ``u1:p1,u2:p2:operator``.

    Users are separated by commas; each is ``USER:PASSWORD[:ROLE]``, the role
    one of ``viewer``, ``reader``, ``operator``, ``admin`` (admin when left out,
    as before). The rules for passwords holding ``:`` or ``,``:

    * the user name ends at the first ``:``;
    * the last ``:`` field is the role only when it names one, else it is part
      of the password: ``ops:a:b`` is the user ``ops`` with the password ``a:b``
      (an admin). A password that itself ends in ``:viewer`` (or another role)
      needs its role written after it: ``ops:pw:viewer:admin``;
    * a comma starts the next user only when the text after it holds a ``:``,
      so ``ops:a,b`` is one user with the password ``a,b``. A password with a
      comma followed later by a colon cannot be written here: give it to
      ``create_app(basic_auth=...)`` instead.

    Raises:
        UsageError: a user without ``:``, an empty user or password. The
            message names the user's place in the list, never what was typed
            (it may be a password).
    """
    entries: list[str] = []
    for piece in text.split(","):
        if entries and ":" not in piece:
            entries[-1] += "," + piece  # a comma inside a password
        else:
            entries.append(piece)
    users: list[tuple[str, str, str]] = []
    for number, entry in enumerate(entries, start=1):
        user, sep, rest = entry.strip().partition(":")
        password, role = rest, "admin"
        head, colon, last = rest.rpartition(":")
        if colon and last in ROLES:
            password, role = head, last
        if not sep or not user or not password:
            raise UsageError(
                f"user {number} of {len(entries)} is not USER:PASSWORD[:ROLE] "
                "(users are separated by commas; the role is viewer, reader, operator or admin)"
            )
        users.append((user, password, role))
    return users


class SecurityMiddleware:
    """Authentication, the acting actor, CSRF cookie and security headers for every route."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: AuthHook | None = None,
        basic_auth: BasicAuth | None = None,
        allowed_hosts: Sequence[str] | None = None,
        public_probes: bool = True,
        read_only: bool = False,
        store: Store | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.basic_users = None if basic_auth is None else basic_users(basic_auth)
        self.public_probes = public_probes
        self.read_only = read_only
        self.store = store
        self.allowed_hosts = None if allowed_hosts is None else _host_patterns(allowed_hosts)
        self._auth_failed_logged = False
        self._tokens_missing_logged = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check access, then run the app as the principal, with the headers added."""
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
        request_id = _request_id(request.headers.get(REQUEST_ID_HEADER))
        found = await self._authenticate(request)
        denied = found if isinstance(found, Response) else None
        token = request.cookies.get(CSRF_COOKIE, "")
        new_cookie = not _plausible_token(token)
        if new_cookie:
            token = secrets.token_urlsafe(32)
        state = scope.setdefault("state", {})
        state["csrf_token"] = token

        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode("latin-1").lower() not in SECURITY_HEADERS
                ]
                headers.extend((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())
                elapsed = (time.perf_counter() - started) * 1000
                headers.append((b"server-timing", f"app;dur={elapsed:.2f}".encode()))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                if new_cookie and denied is None:
                    headers.append((b"set-cookie", _csrf_cookie(scope, token).encode()))
                message = {**message, "headers": headers}
            await send(message)

        if isinstance(found, Response):
            await found(scope, receive, send_with_headers)
            return
        principal = found.restricted(read_only=self.read_only)
        state[PRINCIPAL_KEY] = principal
        client = scope.get("client")
        # The role as given (read-only takes permissions, not the role it was given).
        actor = Actor(
            found.name,
            role=found.role_label,
            via=found.via,
            client=str(client[0]) if client else None,
            request_id=request_id,
        )
        try:
            with acting_as(actor):
                await self.app(scope, receive, send_with_headers)
        except Exception:
            # Starlette's outermost error middleware would answer with none of our
            # headers: answer here (it then only re-raises, for the server's log).
            if not response_started:
                error = PlainTextResponse("internal error", status_code=500)
                await error(scope, receive, send_with_headers)
            raise

    async def _authenticate(self, request: Request) -> Principal | Response:
        """Who sent ``request``, or the answer that refuses it (400, 401, 403, the hook's)."""
        if self.public_probes and _is_probe(request):
            # Live and ready carry no data; an orchestrator's probe sends neither
            # credentials nor the dashboard's host name (see web/probes.py).
            return PUBLIC
        if self.allowed_hosts is not None and not _host_allowed(
            request.headers.get("host", ""), self.allowed_hosts
        ):
            return PlainTextResponse("unknown host", status_code=400)
        api = _token_route(request)
        header = request.headers.get("authorization")
        if header is not None and not _well_formed(header):
            # Over 8 KB, non-ASCII or control characters: no credential of ours. Refused
            # where this app reads credentials; else the hook (or the host) decides.
            if self.basic_users is not None or api:
                return self._unauthorized(request, "malformed Authorization header")
            header = None
        scheme, _, credential = (header or "").partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if scheme == "bearer" and credential.startswith(TOKEN_PREFIX):
            if not api:
                # Pages are for browsers, which send cookies or basic auth, never a token.
                return _refusal(request, 403, "API tokens are accepted on /api/* and /metrics only")
            return await self._token_principal(request, credential)
        principal: Principal | None = None
        if self.basic_users is not None:
            principal = _basic_principal(scheme, credential, self.basic_users)
            if principal is None:
                return self._unauthorized(request, "authentication required")
        if self.auth is not None:
            decided = await self._ask_hook(request)
            if isinstance(decided, Response):
                return decided
            if isinstance(decided, Principal):
                return decided
            if not decided:
                return _refusal(request, 403, "forbidden")
            # True: admin, as it always was; beside basic auth, the basic user's role.
            return principal or Principal("dashboard", role="admin", via="hook")
        return principal or OPEN

    async def _ask_hook(self, request: Request) -> AuthResult:
        assert self.auth is not None
        try:
            decided = self.auth(request)
            if inspect.isawaitable(decided):
                decided = await decided
        except Exception:
            # A hook that cannot decide denies (an anonymous user without the host
            # app's auth middleware often raises). Logged once: it is the app's bug.
            if not self._auth_failed_logged:
                self._auth_failed_logged = True
                logger.exception("flow-tracker dashboard: the auth hook raised; answering 403")
            return False
        if isinstance(decided, (Principal, Response)):
            return decided
        return bool(decided)  # any other truthy value lets in, as it always did

    async def _token_principal(self, request: Request, presented: str) -> Principal | Response:
        """The principal of an API token, or 401 (``WWW-Authenticate: Bearer``)."""
        principal: Principal | None = None
        try:
            from flow_tracker.store import tokens
        except ImportError:
            if not self._tokens_missing_logged:
                self._tokens_missing_logged = True
                logger.warning("flow-tracker dashboard: API tokens are not available here")
        else:
            store = self.store
            try:
                found = (
                    None
                    if store is None
                    else await run_in_threadpool(tokens.verify, store, presented)
                )
            except Exception as exc:  # the database away: no answer on the token either way
                logger.warning("flow-tracker dashboard: could not check an API token: %s", exc)
                unavailable = _refusal(request, 503, "could not check the API token; try again")
                unavailable.headers["retry-after"] = "5"
                return unavailable
            principal = found if isinstance(found, Principal) else None
        if principal is None:
            return _refusal(
                request,
                401,
                "invalid, expired or revoked API token",
                challenges=(BAD_TOKEN_CHALLENGE,),
            )
        if principal.permissions <= TOKEN_CEILING:
            return principal
        # verify() gives viewer, reader or operator only; should a stored role ever
        # say more, a token still never administers nor manages tokens.
        return Principal(
            principal.name, permissions=principal.permissions & TOKEN_CEILING, via=principal.via
        )

    def _unauthorized(self, request: Request, message: str) -> Response:
        challenges = []
        if self.basic_users is not None:
            challenges.append(BASIC_CHALLENGE)
        if _token_route(request):
            challenges.append(BEARER_CHALLENGE)
        return _refusal(request, 401, message, challenges=tuple(challenges))


def _refusal(
    request: Request, status_code: int, message: str, *, challenges: Sequence[str] = ()
) -> Response:
    """A 401 or 403 before any route: a JSON problem under ``/api/``, else plain text."""
    response: Response
    if route_path(request.scope).startswith("/api/"):
        response = JSONResponse({"error": message, "status": status_code}, status_code)
    else:
        response = PlainTextResponse(message, status_code=status_code)
    for challenge in challenges:
        response.headers.append("www-authenticate", challenge)
    return response


def route_path(scope: Scope) -> str:
    """The request's path inside this app: without the prefix it is mounted at."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        return path[len(root) :]
    return path


def _well_formed(header: str) -> bool:
    """Whether an ``Authorization`` header may be read: short, printable ASCII."""
    return len(header) <= MAX_AUTHORIZATION and bool(_HEADER_TEXT.fullmatch(header))


def _token_route(request: Request) -> bool:
    """Whether ``request`` is for a route that takes API tokens: ``/api/*`` and ``/metrics``."""
    path = route_path(request.scope)
    return path.startswith("/api/") or path == "/metrics"


def _request_id(sent: str | None) -> str:
    """``X-Request-ID`` when it is sane (1 to 64 printable ASCII characters), else a new id."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def _basic_principal(scheme: str, credential: str, users: Sequence[_BasicUser]) -> Principal | None:
    """The basic-auth user ``credential`` names with the right password, or None."""
    if scheme != "basic":
        return None
    try:
        # ValueError: not base64 (binascii.Error is one) or not ASCII.
        text = base64.b64decode(credential, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    if not sep:
        return None
    user_digest, password_digest = _digest(user), _digest(password)
    found: Principal | None = None
    # Every user compared, both parts, in constant time: no early exit that tells
    # how far the list was read, so which user names exist does not show.
    for candidate in users:
        user_ok = hmac.compare_digest(user_digest, candidate.user_digest)
        password_ok = hmac.compare_digest(password_digest, candidate.password_digest)
        if user_ok & password_ok:
            found = candidate.principal
    return found


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
