"""API tokens: made by the CLI, sent as ``Authorization: Bearer ft_<id>_<secret>``.

A token is ``ft_`` + an id of 12 lower-case letters and digits + ``_`` + a
secret of 43 URL-safe characters (``secrets.token_urlsafe(32)``). The id holds
no ``_``, so ``ft_<id>_<secret>`` splits one way only, whatever the secret
holds. The id is the row's primary key (one indexed lookup per request); only
the SHA-256 of the secret is kept, so a copy of the table lets nobody in.

Tokens are never admin and never manage tokens: a stolen one can
read, at worst operate, and is revoked by name. Expiry is decided by the
database's clock, which every dashboard host shares. Creating and revoking a
token each write an audit row in the same transaction; the secret is in no row.

Example:
    >>> made = create(store, name="ci", role="viewer", expires_in=timedelta(days=90))
    >>> verify(store, made.token).via
    'token:ci'
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from flow_tracker.actors import current_actor
from flow_tracker.errors import UsageError
from flow_tracker.permissions import Principal
from flow_tracker.redaction import clean_text, truncate
from flow_tracker.store import audit
from flow_tracker.store.clock import database_now, now_sql
from flow_tracker.store.engine import Store, error_line, is_read_only
from flow_tracker.store.schema import api_tokens

logger = logging.getLogger("flow_tracker")

PREFIX = "ft_"
#: The roles a token may have: every preset but admin.
TOKEN_ROLES: tuple[str, ...] = ("viewer", "reader", "operator")
NAME_LIMIT = 120  # the column's length
ID_LENGTH = 12
SECRET_BYTES = 32
LAST_USED_EVERY_S = 60.0  # a busy client writes last_used_at about once a minute, not per request
ACTION = "tokens:manage"

_ID_ALPHABET = string.ascii_lowercase + string.digits
# 43 characters: token_urlsafe(32) is 32 bytes in unpadded base64url.
_SECRET_LENGTH = len(secrets.token_urlsafe(SECRET_BYTES))
_TOKEN = re.compile(
    rf"{PREFIX}([a-z0-9]{{{ID_LENGTH}}})_([A-Za-z0-9_-]{{{_SECRET_LENGTH}}})", re.ASCII
)
_LONGEST = len(PREFIX) + ID_LENGTH + 1 + _SECRET_LENGTH

# Tokens whose last_used_at could not be written (a read-only replica, a busy
# database): not tried again before this moment (time.monotonic), so a replica's
# dashboard does not attempt a failing write on every request.
_quiet_until: dict[str, float] = {}
_log_lock = threading.Lock()
_last_logged = 0.0


@dataclass(frozen=True)
class TokenRecord:
    """A stored token, as ``tokens list`` shows it: never its secret nor its hash.

    Attributes:
        id: the token's public id (the part after ``ft_``).
        name: its unique name among tokens not revoked.
        role: viewer, reader or operator.
        created_at: when it was made (database time).
        created_by: who made it (the acting actor's name).
        expires_at: when it stops working, or None for never.
        last_used_at: when a request last presented it (to about a minute), or None.
        revoked_at: when it was revoked, or None.
        revoked_by: who revoked it.
        status: ``active``, ``expired`` or ``revoked`` when it was read (database time).
    """

    id: str
    name: str
    role: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None
    status: str

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (times as ISO 8601 strings)."""

        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "status": self.status,
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
            "expires_at": iso(self.expires_at),
            "last_used_at": iso(self.last_used_at),
            "revoked_at": iso(self.revoked_at),
            "revoked_by": self.revoked_by,
        }


@dataclass(frozen=True)
class CreatedToken:
    """A new token: the one time its plaintext exists outside the client that keeps it.

    Attributes:
        token: ``ft_<id>_<secret>``, to send as ``Authorization: Bearer …``; left out
            of ``repr`` so that logging the result does not log the secret.
        record: what is stored about it.
    """

    token: str = field(repr=False)
    record: TokenRecord


def create(
    store: Store, *, name: str, role: str, expires_in: timedelta | None = None
) -> CreatedToken:
    """Make a token called ``name`` with ``role``; return its plaintext, shown only now.

    Args:
        store: the tracking database.
        name: 1 to 120 printable characters (spaces around it are dropped), unique
            among the tokens not revoked; a revoked token's name may be used again.
        role: ``viewer``, ``reader`` or ``operator`` (there are no admin tokens).
        expires_in: how long it works, from now on the database's clock; None: until revoked.

    Raises:
        UsageError: an admin or unknown role, a bad name, a name in use, an expiry
            that is not in the future.
    """
    name = _checked_name(name)
    role = _checked_role(role)
    if expires_in is not None and expires_in <= timedelta(0):
        raise UsageError(f"a token's expiry must be in the future, not {expires_in}")
    store.ensure_schema()
    actor = current_actor()
    created_by = _who(actor.name)
    # The id is random: a clash with an existing one (1 in 36**12) is tried again;
    # a clash on the name is the unique index speaking, race-safe across processes.
    for _ in range(3):
        token_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
        secret = secrets.token_urlsafe(SECRET_BYTES)
        try:
            with store.begin_write() as conn:
                now = database_now(conn)
                expires_at = _expiry(now, expires_in)
                row = {
                    "id": token_id,
                    "name": name,
                    "role": role,
                    "secret_sha256": _digest(secret),
                    "created_at": now,
                    "created_by": created_by,
                    "expires_at": expires_at,
                }
                conn.execute(api_tokens.insert().values(**row))
                audit.write(
                    conn,
                    action=ACTION,
                    target=name,
                    outcome="allowed",
                    detail=_detail("create", role, expires_at),
                    actor=actor,
                )
        except IntegrityError:
            if _active_named(store, name):
                raise UsageError(
                    f"a token named {name!r} exists already: revoke it first "
                    "(flow-tracker tokens revoke NAME) or choose another name"
                ) from None
            continue
        record = TokenRecord(
            id=token_id,
            name=name,
            role=role,
            created_at=now,
            created_by=created_by,
            expires_at=expires_at,
            last_used_at=None,
            revoked_at=None,
            revoked_by=None,
            status="active",
        )
        return CreatedToken(token=f"{PREFIX}{token_id}_{secret}", record=record)
    raise UsageError("could not find a free token id; try again")  # pragma: no cover


def list_tokens(store: Store, include_revoked: bool = False) -> list[TokenRecord]:
    """The stored tokens, oldest first: active and expired ones, revoked ones too if asked."""
    t = api_tokens.c
    query = select(api_tokens, now_sql(store.dialect).label("now")).order_by(
        t.created_at, t.name, t.id
    )
    if not include_revoked:
        query = query.where(t.revoked_at.is_(None))
    store.ensure_schema()
    with store.engine.connect() as conn:
        return [_record(row) for row in conn.execute(query)]


def revoke(store: Store, name: str) -> bool:
    """Revoke the token called ``name`` (not revoked yet): it is refused from now on.

    Returns:
        True when a token was revoked; False when no token of that name was
        active (unknown, or revoked already): nothing changed, no audit row.
    """
    try:
        name = _checked_name(name)
    except UsageError:
        return False  # a name no token can have (empty, a NUL...) names no token
    t = api_tokens.c
    store.ensure_schema()
    actor = current_actor()
    with store.begin_write() as conn:
        found = conn.execute(
            select(t.id, t.role, t.expires_at).where(t.name == name, t.revoked_at.is_(None))
        ).first()
        if found is None:
            return False
        # revoked_at IS NULL again: of two revokes at once, one changes the row.
        done = conn.execute(
            update(api_tokens)
            .where(t.id == found.id, t.revoked_at.is_(None))
            .values(revoked_at=now_sql(store.dialect), revoked_by=_who(actor.name))
        )
        if done.rowcount != 1:
            return False
        audit.write(
            conn,
            action=ACTION,
            target=name,
            outcome="allowed",
            detail=_detail("revoke", found.role, found.expires_at),
            actor=actor,
        )
    return True


def verify(store: Store, presented: str) -> Principal | None:
    """The principal of the token ``presented``, or None for anything else it may be.

    None, never an error, for whatever a client can send: garbage, oversized
    or non-ASCII text, a NUL, a wrong prefix, an unknown id, a wrong secret, a
    token expired (database time) or revoked. The text is checked before any
    query, so only a well-formed token reaches the database.

    A valid token's ``last_used_at`` is brought up to date at most about once a
    minute; failing to write it (a read-only replica) never refuses the token.
    Nothing is cached: each call reads the token's row by its primary key, so a
    revocation holds from the next request on.

    Raises:
        SQLAlchemyError: only when the database cannot be read. The token may
            well be valid: the caller answers "try again" (503), not 401.
    """
    parsed = _parse(presented)
    if parsed is None:
        return None
    token_id, secret = parsed
    t = api_tokens.c
    query = select(
        t.name,
        t.role,
        t.secret_sha256,
        t.expires_at,
        t.revoked_at,
        t.last_used_at,
        now_sql(store.dialect).label("now"),
    ).where(t.id == token_id)
    with store.engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None or not hmac.compare_digest(
        str(row.secret_sha256).encode(), _digest(secret).encode()
    ):
        return None
    if row.revoked_at is not None or row.role not in TOKEN_ROLES:
        return None  # a role other than these was not written by create(): refuse it
    if row.expires_at is not None and row.expires_at <= row.now:
        return None
    if row.last_used_at is None or row.now - row.last_used_at >= timedelta(
        seconds=LAST_USED_EVERY_S
    ):
        _touch(store, token_id)
    try:
        return Principal(row.name, role=row.role, via=f"token:{row.name}")
    except UsageError:  # a name emptied by hand in the table: no principal to give
        return None


# -- helpers ------------------------------------------------------------------------------


def _parse(presented: object) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None (checked before any query)."""
    if not isinstance(presented, str):
        return None
    text = presented.strip()
    if len(text) > _LONGEST or not text.isascii():
        return None
    match = _TOKEN.fullmatch(text)
    return None if match is None else (match.group(1), match.group(2))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise UsageError("a token's name is a string")
    name = name.strip()
    if not name:
        raise UsageError("a token needs a name (e.g. --name ci)")
    if len(name) > NAME_LIMIT:
        raise UsageError(f"a token's name has at most {NAME_LIMIT} characters, not {len(name)}")
    if not name.isprintable():
        # NULs, control characters, line breaks and lone surrogates: none belongs in a name
        # shown in lists, in the audit log and in `via` (PostgreSQL refuses NUL outright).
        raise UsageError(f"a token's name has only printable characters: {name[:40]!r}")
    return name


def _checked_role(role: object) -> str:
    if role == "admin":
        raise UsageError(
            "no admin tokens: a token may be viewer, reader or operator "
            "(admin actions are done from the dashboard or the command line)"
        )
    if not isinstance(role, str) or role not in TOKEN_ROLES:
        shown = str(role)[:40]
        raise UsageError(f"unknown token role {shown!r}; choose {', '.join(TOKEN_ROLES)}")
    return role


def _who(name: str) -> str:
    """An actor's name as its column keeps it on every database (no NUL, at most 255)."""
    return truncate(clean_text(name), 255)


def _expiry(now: datetime, expires_in: timedelta | None) -> datetime | None:
    if expires_in is None:
        return None
    try:
        return now + expires_in
    except OverflowError:
        raise UsageError(f"an expiry of {expires_in} is past the year 9999") from None


def _detail(operation: str, role: str, expires_at: datetime | None) -> dict[str, Any]:
    return {
        "operation": operation,
        "role": role,
        "expires_at": None if expires_at is None else expires_at.isoformat(),
    }


def _active_named(store: Store, name: str) -> bool:
    t = api_tokens.c
    with store.engine.connect() as conn:
        found = conn.execute(
            select(t.id).where(t.name == name, t.revoked_at.is_(None)).limit(1)
        ).first()
    return found is not None


def _record(row: Any) -> TokenRecord:
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and row.expires_at <= row.now:
        status = "expired"
    else:
        status = "active"
    return TokenRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        status=status,
    )


def _touch(store: Store, token_id: str) -> None:
    """Set the token's ``last_used_at`` to now unless it was set within the last minute.

    The condition is in the UPDATE too, so that many requests (or many dashboard
    processes) at once write it once. Never raises.
    """
    if _quiet_until.get(token_id, 0.0) > time.monotonic():
        return
    t = api_tokens.c
    statement = (
        update(api_tokens)
        .where(
            t.id == token_id,
            or_(
                t.last_used_at.is_(None),
                t.last_used_at <= now_sql(store.dialect, -LAST_USED_EVERY_S),
            ),
        )
        .values(last_used_at=now_sql(store.dialect))
    )
    try:
        with store.begin_write() as conn:
            conn.execute(statement)
        _quiet_until.pop(token_id, None)
    except Exception as exc:
        _quiet_until[token_id] = time.monotonic() + LAST_USED_EVERY_S
        # On a replica this is expected: not worth a warning each minute.
        level = logging.DEBUG if is_read_only(exc) else logging.WARNING
        _log_rarely(level, "flow-tracker: a token's last use was not stored: %s", exc)


def _log_rarely(level: int, message: str, exc: BaseException) -> None:
    """Log ``message`` at most once a minute: a failing database must not flood the log."""
    global _last_logged
    now = time.monotonic()
    with _log_lock:
        if now - _last_logged < LAST_USED_EVERY_S:
            return
        _last_logged = now
    with contextlib.suppress(Exception):  # a broken logging set-up must not refuse a token
        logger.log(level, message, error_line(exc))
