"""The audit log: who did what, how they got in, from where, and what came of it.

One row per action — allowed, refused or failed — in ``flow_tracker_audit``:

* :func:`write` adds the row of an action that was done inside the caller's
  transaction, so the change and its row commit together (or neither does);
* :func:`record` adds a row in a transaction of its own, after the fact: a
  failure, a broker's effect (a publish), an action that spans several
  transactions (a clean-up, a reap);
* :func:`record_refusal` counts a refused request, one row per actor, action and
  minute (``times`` goes up), so a script hammering a forbidden route writes little.

A row holds parameters, never payload values: the step resolved and why, not
the result; the process requeued, not the job's arguments. Its ``detail`` goes
through the redactor anyway (a reason may carry ``password=...``), every text
is cleaned of what PostgreSQL refuses (NUL, lone surrogates) and cut to its
column. A failed audit write never fails the action it records: it is logged,
once per cause, and the action's answer stands (a dashboard reading a replica,
whose every write fails, keeps answering).

:func:`list_entries` reads the log newest first, a keyset page at a time;
:func:`delete_older_than` is its retention (``audit_retention_days``), applied by
the reaper; a clean-up of processes never touches it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal_column, or_, select, type_coerce, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from flow_tracker.actors import Actor, current_actor
from flow_tracker.errors import UsageError
from flow_tracker.redaction import Redactor, clean_text, redact_text, truncate
from flow_tracker.store.clock import now_sql
from flow_tracker.store.engine import Store, error_line, is_read_only
from flow_tracker.store.schema import audit_log
from flow_tracker.store.types import UTCDateTime, as_utc

logger = logging.getLogger("flow_tracker")

ALLOWED = "allowed"
REFUSED = "refused"
FAILED = "failed"
OUTCOMES = (ALLOWED, REFUSED, FAILED)

# The columns' sizes (store/schema.py): a longer value would make PostgreSQL refuse the row.
ACTOR_LIMIT = 255
ROLE_LIMIT = 32
VIA_LIMIT = 255
ACTION_LIMIT = 64
TARGET_LIMIT = 255
CLIENT_LIMIT = 255
REQUEST_ID_LIMIT = 64
# A detail is a few parameters: each string of it is cut here, the whole document there.
DETAIL_STRING_LIMIT = 500
DETAIL_LIMIT = 8_192
ERROR_MESSAGE_LIMIT = 300

DEFAULT_LIMIT = 100
MAX_LIMIT = 1_000
DELETE_BATCH = 10_000

Hook = Callable[[Connection, Mapping[str, Any]], None]
"""Writes an action's row in the transaction of its change, with what was learnt there
(``{"cancelled_steps": 3}``): what a store function that changes data takes as ``audit=``."""


def _text(value: object, limit: int) -> str:
    """``value`` as text a column of ``limit`` characters keeps on every database."""
    # Cleaned before it is cut: an escaped NUL is longer than the character it stands for.
    return truncate(clean_text(value if isinstance(value, str) else str(value)), limit)


def _target_text(target: object) -> str:
    """A target as stored: it is a name or an id someone typed, so secrets are cut out too."""
    return _text(redact_text(str(target)), TARGET_LIMIT)


def _optional(value: object, limit: int) -> str | None:
    return None if value is None else _text(value, limit)


_redactors: dict[tuple[str, ...], Redactor] = {}


def _redactor() -> Redactor:
    from flow_tracker import config

    keys = config.current().redact_keys
    found = _redactors.get(keys)
    if found is None:
        found = _redactors[keys] = Redactor(keys, max_string=DETAIL_STRING_LIMIT)
    return found


def _detail(detail: Mapping[str, Any] | None) -> Any:
    """``detail`` redacted, cleaned and bounded as a JSON document (None stays NULL)."""
    if not detail:
        return None
    scrubbed = _redactor().scrub(dict(detail))
    text = json.dumps(scrubbed, ensure_ascii=False)
    if len(text) <= DETAIL_LIMIT:
        return scrubbed
    return {"_truncated": True, "original_size": len(text), "preview": truncate(text, 2_000)}


def _row(
    action: str,
    target: object,
    outcome: str,
    detail: Mapping[str, Any] | None,
    actor: Actor | None,
) -> dict[str, Any]:
    if outcome not in OUTCOMES:
        raise ValueError(f"an audit outcome is one of {', '.join(OUTCOMES)}, not {outcome!r}")
    who = actor if actor is not None else current_actor()
    return {
        "actor": _text(who.name, ACTOR_LIMIT),
        "role": _text(who.role, ROLE_LIMIT),
        "via": _text(who.via, VIA_LIMIT),
        "action": _text(action, ACTION_LIMIT),
        "target": None if target is None else _target_text(target),
        "outcome": outcome,
        "detail": _detail(detail),
        "client": _optional(who.client, CLIENT_LIMIT),
        "request_id": _optional(who.request_id, REQUEST_ID_LIMIT),
    }


# -- a failed audit write: logged once per cause ------------------------------------------------

_REPORTED: set[str] = set()
_REPORTED_KEPT = 100
_reported_lock = threading.Lock()


def _cause(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None)
    return f"{type(orig).__name__}:{state or error_line(exc)[:120]}"


def _report(exc: BaseException, doing: str) -> None:
    """Log that an audit row was not written: a warning the first time for each cause.

    A database that refuses every audit write (a replica, a missing table) would
    otherwise log one line per request; later ones go to the debug level.
    """
    cause = _cause(exc)
    with _reported_lock:
        first = cause not in _REPORTED
        if first and len(_REPORTED) < _REPORTED_KEPT:
            _REPORTED.add(cause)
    level = logging.WARNING if first else logging.DEBUG
    why = (
        "the database is read-only (a replica?)"
        if is_read_only(exc)
        else f"{type(exc).__name__}: {error_line(exc)}"
    )
    with contextlib.suppress(Exception):  # a broken logging set-up must not spread
        logger.log(level, "flow-tracker: audit row not written while %s: %s", doing, why)


# -- writing -----------------------------------------------------------------------------------


def write(
    conn: Connection,
    *,
    action: str,
    target: str | None,
    outcome: str,
    detail: Mapping[str, Any] | None = None,
    actor: Actor | None = None,
) -> None:
    """Add an action's row inside ``conn``'s transaction: it commits with the change.

    The row is written in a savepoint: should the insert fail (the table missing,
    a broken value), the savepoint is rolled back, the failure logged, and the
    caller's change goes on and commits — an audit write never fails an action.

    Args:
        conn: the connection of the change, in its transaction.
        action: the permission the action needs (``"workflows:resolve"``).
        target: what it acted on (a run id, a process id, a token's name), or None.
        outcome: ``allowed``, ``refused`` or ``failed``.
        detail: its parameters (never payload values); redacted and cut to fit.
        actor: who acted; default :func:`~flow_tracker.actors.current_actor`.

    Raises:
        ValueError: ``outcome`` is not one of :data:`OUTCOMES` (a mistake in the caller).
    """
    values = _row(action, target, outcome, detail, actor)
    try:
        with conn.begin_nested():
            conn.execute(insert(audit_log).values(at=now_sql(conn.dialect.name), **values))
    except SQLAlchemyError as exc:
        _report(exc, f"recording {values['action']}")


def record(
    store: Store,
    *,
    action: str,
    target: str | None,
    outcome: str,
    detail: Mapping[str, Any] | None = None,
    actor: Actor | None = None,
) -> None:
    """Add an action's row in a transaction of its own, after the fact; never raises.

    For what has no transaction to join: a failure, a broker's effect (a publish),
    an action spread over several transactions. A row that cannot be written is
    logged (once per cause) and forgotten; the action's answer stands.
    """
    try:
        values = _row(action, target, outcome, detail, actor)
        store.ensure_schema()
        with store.begin_write() as conn:
            conn.execute(insert(audit_log).values(at=now_sql(store.dialect), **values))
    except Exception as exc:
        _report(exc, f"recording {action!r}")


def _minute_start(dialect: str) -> ColumnElement[datetime]:
    """The start of the database's current minute."""
    if dialect == "postgresql":
        return type_coerce(func.date_trunc("minute", func.clock_timestamp()), UTCDateTime)
    # SQLite keeps moments as text in SQLAlchemy's format, which sorts as time does.
    return literal_column("strftime('%Y-%m-%d %H:%M:00.000000', 'now')", type_=UTCDateTime)


def record_refusal(store: Store, *, action: str, target: str | None, actor: Actor) -> None:
    """Count a refused request: one row per actor, action and minute; never raises.

    The minute's row of this actor (name and way in) and action gets ``times + 1``
    and the target, client and request id of this latest refusal (its ``at`` stays
    the first one's), so the newest request is the one to look up in the server's
    log. The first refusal of a minute adds the row. Two refusals at the same
    instant may both add one: two rows for a minute, which is fine.
    """
    try:
        values = _row(action, target, REFUSED, None, actor)
        store.ensure_schema()
        a = audit_log.c
        with store.begin_write() as conn:
            found = conn.execute(
                select(a.id)
                .where(
                    and_(
                        a.actor == values["actor"],
                        a.at >= _minute_start(store.dialect),
                        a.action == values["action"],
                        a.via == values["via"],
                        a.outcome == REFUSED,
                    )
                )
                .order_by(a.id.desc())
                .limit(1)
            ).scalar()
            if found is not None:
                conn.execute(
                    update(audit_log)
                    .where(a.id == found)
                    .values(
                        times=a.times + 1,
                        target=values["target"],
                        client=values["client"],
                        request_id=values["request_id"],
                    )
                )
            else:
                conn.execute(insert(audit_log).values(at=now_sql(store.dialect), **values))
    except Exception as exc:
        _report(exc, f"recording a refusal of {action!r}")


def on_change(
    *,
    action: str,
    target: str | None,
    detail: Mapping[str, Any] | None = None,
    actor: Actor | None = None,
) -> Hook:
    """The ``allowed`` row of an action, for the store function that makes its change.

    The store function calls it inside its transaction with what it learnt there
    (how many steps it cancelled); the actor is taken now, where the action was asked.
    """
    who = actor if actor is not None else current_actor()

    def hook(conn: Connection, facts: Mapping[str, Any]) -> None:
        write(
            conn,
            action=action,
            target=target,
            outcome=ALLOWED,
            detail={**(detail or {}), **facts},
            actor=who,
        )

    return hook


def error_detail(exc: BaseException) -> dict[str, str]:
    """What a failed row says of its error: the class and a short message, secrets cut out.

    A database error gives its driver's first line only: SQLAlchemy's message
    adds the statement's parameters, which may be the payload.
    """
    message = error_line(exc) if isinstance(exc, SQLAlchemyError) else str(exc)
    return {
        "error": type(exc).__name__,
        "message": truncate(clean_text(redact_text(message)), ERROR_MESSAGE_LIMIT),
    }


@contextlib.contextmanager
def failures_recorded(
    store: Store,
    *,
    action: str,
    target: str | None,
    detail: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """Record a ``failed`` row when the block raises (then let the error go on).

    The block's own ``allowed`` row is written with its change (:func:`write`).
    """
    try:
        yield
    except Exception as exc:
        record(
            store,
            action=action,
            target=target,
            outcome=FAILED,
            detail={**(detail or {}), **error_detail(exc)},
        )
        raise


# -- actions that run on a schedule ----------------------------------------------------------

_SCHEDULED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "flow_tracker_scheduled", default=False
)


@contextlib.contextmanager
def scheduled() -> Iterator[None]:
    """Mark the block's actions as a schedule's (``flow-tracker reap --every``), not a person's.

    A scheduled reap that found nothing writes no row: one every few seconds
    would bury the actions people took.
    """
    token = _SCHEDULED.set(True)
    try:
        yield
    finally:
        _SCHEDULED.reset(token)


def is_scheduled() -> bool:
    """True for an action run on a schedule: inside :func:`scheduled`, or by the library.

    The library's actor (a script, a cron job, a worker) is the one that runs the
    reaper every minute; the dashboard and the CLI act for a person.
    """
    return _SCHEDULED.get() or current_actor().via == "library"


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    at: datetime
    """The database's time of the action (of the first refusal of its minute)."""
    actor: str
    role: str
    via: str
    """How the actor got in: ``hook``, ``basic:<user>``, ``token:<name>``, ``cli:<user>@<host>``
    or ``library``."""
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any] | None
    client: str | None
    request_id: str | None
    times: int
    """How many refusals this row counts (1 for anything else)."""

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "role": self.role,
            "via": self.via,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "detail": self.detail,
            "client": self.client,
            "request_id": self.request_id,
            "times": self.times,
        }


@dataclass(frozen=True)
class AuditPage:
    """One page of :func:`list_entries`, newest first; pass ``next_cursor`` for the next."""

    entries: list[AuditEntry]
    next_cursor: str | None

    def __iter__(self) -> Iterator[AuditEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def encode_cursor(at: datetime, entry_id: int) -> str:
    """The page cursor that continues after the entry ``(at, entry_id)``."""
    raw = f"{as_utc(at).isoformat()}|{int(entry_id)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """``(at, id)`` of a cursor :func:`encode_cursor` made.

    Raises:
        UsageError: not such a cursor (edited, cut short).
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, ident = base64.urlsafe_b64decode(padded.encode("ascii")).decode().split("|")
        entry_id = int(ident)
        if not 0 < entry_id < 2**63:
            raise ValueError(ident)
        return as_utc(datetime.fromisoformat(stamp)), entry_id
    except (ValueError, OverflowError, binascii.Error, UnicodeError):
        raise UsageError(f"invalid cursor {clean_text(cursor)[:100]!r}") from None


def _matching(value: str | None, limit: int) -> str | None:
    """A filter's value as rows keep it: cleaned and cut as :func:`write` stores it."""
    return None if value is None else _text(value, limit)


def list_entries(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str | None = None,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> AuditPage:
    """Audit rows newest first, filtered; ``next_cursor`` continues after the last one.

    Args:
        store: the tracking database.
        actor: only this actor's rows (the exact name).
        action: only this action (``"jobs:requeue"``).
        outcome: ``allowed``, ``refused`` or ``failed``.
        since: rows at or after this moment.
        until: rows before this moment.
        target: only rows about this target (a run or process id, a token's name).
        limit: rows per page, 1 to 1,000.
        cursor: ``next_cursor`` of the previous page.

    Raises:
        UsageError: an unknown outcome, a limit out of range or a broken cursor.
    """
    if outcome is not None and outcome not in OUTCOMES:
        raise UsageError(f"outcome is one of {', '.join(OUTCOMES)}, not {outcome[:40]!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"limit is a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    a = audit_log.c
    conditions: list[ColumnElement[bool]] = []
    for column, value, size in ((a.actor, actor, ACTOR_LIMIT), (a.action, action, ACTION_LIMIT)):
        wanted = _matching(value, size)
        if wanted is not None:
            conditions.append(column == wanted)
    if target is not None:
        conditions.append(a.target == _target_text(target))
    if outcome is not None:
        conditions.append(a.outcome == outcome)
    if since is not None:
        conditions.append(a.at >= as_utc(since))
    if until is not None:
        conditions.append(a.at < as_utc(until))
    if cursor:
        at, last_id = decode_cursor(cursor)
        conditions.append(or_(a.at < at, and_(a.at == at, a.id < last_id)))
    store.ensure_schema()
    query = select(audit_log).where(*conditions).order_by(a.at.desc(), a.id.desc())
    with store.engine.connect() as conn:
        rows = conn.execute(query.limit(limit + 1)).all()
    entries = [
        AuditEntry(
            id=int(row.id),
            at=as_utc(row.at),
            actor=row.actor,
            role=row.role,
            via=row.via,
            action=row.action,
            target=row.target,
            outcome=row.outcome,
            detail=row.detail if isinstance(row.detail, dict) else None,
            client=row.client,
            request_id=row.request_id,
            times=int(row.times or 1),
        )
        for row in rows[:limit]
    ]
    more = len(rows) > limit
    last = entries[-1] if entries else None
    next_cursor = encode_cursor(last.at, last.id) if more and last is not None else None
    return AuditPage(entries, next_cursor)


# -- retention -----------------------------------------------------------------------------------


def delete_older_than(store: Store, days: float) -> int:
    """Delete the audit rows older than ``days`` (by the database's clock); how many went.

    In batches, one short transaction each. Only the audit log's own retention
    calls this (``audit_retention_days``, applied by the reaper): cleaning up
    processes leaves it alone.

    Raises:
        UsageError: ``days`` is not a positive number.
    """
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not days > 0:
        raise UsageError(f"days must be a positive number, not {days!r}")
    store.ensure_schema()
    a = audit_log.c
    cutoff = now_sql(store.dialect, -float(days) * 86_400)
    deleted = 0
    while True:
        with store.begin_write() as conn:
            batch = select(a.id).where(a.at < cutoff).limit(DELETE_BATCH)
            gone = conn.execute(delete(audit_log).where(a.id.in_(batch))).rowcount
        deleted += max(gone or 0, 0)
        if not gone or gone < DELETE_BATCH:
            return deleted


RETENTION_EVERY_S = 3600.0  # how often a long-lived reaper deletes what passed the retention
_retention_due: weakref.WeakKeyDictionary[Store, float] = weakref.WeakKeyDictionary()
_retention_lock = threading.Lock()


def keep_retention(store: Store) -> int:
    """Apply ``audit_retention_days`` to ``store``, at most once an hour; never raises.

    The reaper calls it at each pass, as it keeps partitions and rollups: where
    old data is already deleted on a schedule. Returns how many rows went now.
    """
    from flow_tracker import config, runtime

    now = time.monotonic()
    with _retention_lock:
        if now < _retention_due.get(store, 0.0):
            return 0
        _retention_due[store] = now + RETENTION_EVERY_S
    try:
        return delete_older_than(store, config.current().audit_retention_days)
    except Exception as exc:  # the next pass tries again
        runtime.report_internal_error(exc, "deleting audit rows past their retention")
        return 0
