"""Who may do what: permissions as ``resource:action`` strings, roles, principals.

The dashboard, its API, the CLI and the library all ask one question, in one
place: :func:`allowed`. A permission is a string such as ``"jobs:requeue"``
(also a valid OAuth2 / Starlette scope), a role a named set of them, and a
:class:`Principal` whoever asks: a user of the host app, a basic-auth user, an
API token, the CLI's operating-system user.

Example:
    >>> viewer = Principal("ana", role="viewer")
    >>> viewer.can("runs:read"), viewer.can("jobs:requeue")
    (True, False)
    >>> ops = Principal("ci", permissions=ROLES["operator"] - {"payloads:read"})
    >>> ops.can("workflows:retry"), ops.can("payloads:read")
    (True, False)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from flow_tracker.errors import UsageError

#: Every permission there is, in the order the audit page and the docs list them.
PERMISSIONS: tuple[str, ...] = (
    "runs:read",
    "payloads:read",
    "jobs:reap",
    "jobs:requeue",
    "workflows:start",
    "workflows:retry",
    "workflows:resolve",
    "workflows:cancel",
    "history:delete",
    "audit:read",
    "tokens:manage",
)

#: The permissions that change data: what ``read_only=True`` takes from everyone.
WRITE_PERMISSIONS: frozenset[str] = frozenset(
    {
        "jobs:reap",
        "jobs:requeue",
        "workflows:start",
        "workflows:retry",
        "workflows:resolve",
        "workflows:cancel",
        "history:delete",
        "tokens:manage",
    }
)

_VIEWER = frozenset({"runs:read"})
_READER = _VIEWER | {"payloads:read"}
_OPERATOR = _READER | {p for p in PERMISSIONS if p.startswith(("jobs:", "workflows:"))}

#: The presets, each including the one before: viewer < reader < operator < admin.
ROLES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "viewer": _VIEWER,
        "reader": _READER,
        "operator": _OPERATOR,
        "admin": frozenset(PERMISSIONS),
    }
)


def check_permissions(permissions: Iterable[str]) -> frozenset[str]:
    """``permissions`` as a frozenset, or a :class:`UsageError` naming an unknown one.

    An unknown string is a typo (``"job:requeue"``), and silently granting nothing
    would look like a bug elsewhere: it is refused where the principal is made.
    """
    if isinstance(permissions, str):
        raise UsageError(
            f"permissions is a set of strings, not the string {permissions[:80]!r}; "
            f"write {{{permissions[:80]!r}}}"
        )
    chosen = frozenset(permissions)
    unknown = sorted(p for p in chosen if p not in PERMISSIONS)
    if unknown:
        names = ", ".join(repr(p[:80]) for p in unknown[:5])
        raise UsageError(f"unknown permission {names}; known: {', '.join(PERMISSIONS)}")
    return chosen


def role_permissions(role: str) -> frozenset[str]:
    """The permissions of the preset ``role``, or a :class:`UsageError` for an unknown one."""
    try:
        return ROLES[role]
    except (KeyError, TypeError):
        raise UsageError(f"unknown role {str(role)[:80]!r}; known: {', '.join(ROLES)}") from None


@dataclass(frozen=True, init=False)
class Principal:
    """Whoever asks, and what they may do.

    Give exactly one of ``role`` (a key of :data:`ROLES`) and ``permissions``
    (any set of :data:`PERMISSIONS`); either is checked at once.

    Attributes:
        name: who it is, as the audit log and a run's history show it.
        role: the preset it was given, or None for a hand-made set.
        permissions: what it may do.
        via: how it got in (``hook``, ``basic:<user>``, ``token:<name>``,
            ``cli:<user>@<host>``, ``library``); set by whoever authenticated it.
    """

    name: str
    role: str | None = None
    permissions: frozenset[str] = field(default=frozenset())
    via: str = "hook"

    def __init__(
        self,
        name: str,
        role: str | None = None,
        *,
        permissions: Iterable[str] | None = None,
        via: str = "hook",
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise UsageError("a Principal needs a non-empty name")
        if (role is None) == (permissions is None):
            raise UsageError("give a Principal exactly one of role= and permissions=")
        granted = (
            role_permissions(role) if role is not None else check_permissions(permissions or ())
        )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "permissions", granted)
        object.__setattr__(self, "via", via)

    def can(self, permission: str) -> bool:
        """Whether this principal holds ``permission``."""
        return permission in self.permissions

    @property
    def role_label(self) -> str:
        """The role's name, or ``custom`` for a hand-made set (what the audit log keeps)."""
        return self.role if self.role is not None else "custom"

    def restricted(self, *, read_only: bool) -> Principal:
        """The same principal without the permissions that change data, when ``read_only``."""
        if not read_only or not (self.permissions & WRITE_PERMISSIONS):
            return self
        return Principal(self.name, permissions=self.permissions - WRITE_PERMISSIONS, via=self.via)


def allowed(principal: Principal | None, permission: str, target: object = None) -> bool:
    """Whether ``principal`` may do ``permission`` (to ``target``, when there is one).

    The one check every route, button and command makes. ``target`` (a workflow
    name, a process, a category) is not consulted yet; it is here so a later
    scope ("operator of the billing workflows") fits without changing a caller.
    """
    del target
    if permission not in PERMISSIONS:
        raise UsageError(f"unknown permission {permission!r}")
    return principal is not None and principal.can(permission)


ADMIN = Principal("admin", role="admin")
