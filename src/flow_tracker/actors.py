"""Who is acting right now: the actor every audited action is recorded under.

The dashboard sets it for each request (the principal that got in, from where),
the CLI for each command (``cli:<os user>@<host>``); anything else — a script,
a worker, a test — acts as the library. Library functions that change data
(``retry_step``, ``requeue``, ``cleanup``, …) read it with :func:`current_actor`
and write their audit row in the transaction of the change, so no caller has
to pass it down (``run_in_threadpool`` and ``asyncio`` tasks carry it along).

Example:
    >>> with acting_as(Actor("ana", role="operator", via="hook")):
    ...     current_actor().name
    'ana'
    >>> current_actor().via
    'library'
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Actor:
    """Who acts, as the audit log and a run's history keep them.

    Attributes:
        name: the principal's name (the OS user for the CLI and the library).
        role: the role it acted with (``custom`` for a hand-made set of permissions).
        via: how it got in: ``hook``, ``basic:<user>``, ``token:<name>``,
            ``cli:<os user>@<host>`` or ``library``.
        client: the address the request came from, when there was a request.
        request_id: the request's id (``X-Request-ID`` when sent), to tie rows together.
    """

    name: str
    role: str = "admin"
    via: str = "library"
    client: str | None = None
    request_id: str | None = None


@cache
def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a container without a passwd entry
        return "unknown"


@cache
def _host() -> str:
    try:
        return socket.gethostname() or "localhost"
    except OSError:
        return "localhost"


def library_actor() -> Actor:
    """The actor of code that calls the library directly (a script, a worker, a test)."""
    return Actor(_os_user(), role="admin", via="library")


def cli_actor() -> Actor:
    """The actor of a ``flow-tracker`` command: its OS user on this host."""
    user = _os_user()
    return Actor(user, role="admin", via=f"cli:{user}@{_host()}")


_CURRENT: contextvars.ContextVar[Actor | None] = contextvars.ContextVar(
    "flow_tracker_actor", default=None
)


def current_actor() -> Actor:
    """The actor of the action being done now: the innermost :func:`acting_as`, else the library."""
    actor = _CURRENT.get()
    return actor if actor is not None else library_actor()


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    """Act as ``actor`` inside the block (this thread or task and what it starts)."""
    token = _CURRENT.set(actor)
    try:
        yield actor
    finally:
        _CURRENT.reset(token)
