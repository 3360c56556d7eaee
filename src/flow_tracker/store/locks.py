"""How critical-section locks are stored: one row per ``(name, key)`` ever used.

:mod:`flow_tracker.locks` decides what a lock means (re-entry, waiting,
skipping, fencing, the decorator); this module only reads and writes
``flow_tracker_locks``. Every time here is the database's clock, so hosts whose
clocks disagree agree on who holds what.

Rows are kept after release (``holder = ''``, expired) so that a key's
``fence`` only ever grows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update

from flow_tracker.store.clock import database_now, now_sql
from flow_tracker.store.dialect import insert_for
from flow_tracker.store.engine import Store
from flow_tracker.store.schema import locks

RELEASED = datetime(1970, 1, 1)


def try_acquire(
    store: Store, name: str, key: str, holder: str, process_id: uuid.UUID | None, ttl: float
) -> tuple[int | None, str | None]:
    """Take the lock in one statement: ``(fence, None)``, or ``(None, current holder)``.

    The upsert succeeds only when the row is free (released, or expired by the
    database's clock) or already ``holder``'s; each new holder gets a larger fence.
    """
    now = now_sql(store.dialect)
    values = insert_for(store.dialect)(locks).values(
        name=name,
        key=key,
        holder=holder,
        process_id=process_id,
        fence=1,
        acquired_at=now,
        expires_at=now_sql(store.dialect, ttl),
    )
    new = values.excluded
    stmt = values.on_conflict_do_update(
        index_elements=["name", "key"],
        set_={
            "holder": new.holder,
            "process_id": new.process_id,
            "fence": locks.c.fence + 1,
            "acquired_at": new.acquired_at,
            "expires_at": new.expires_at,
        },
        where=(locks.c.expires_at <= new.acquired_at) | (locks.c.holder == holder),
    ).returning(locks.c.fence)
    with store.begin_write() as conn:
        fence = conn.execute(stmt).scalar()
        if fence is not None:
            return int(fence), None
        current = conn.execute(
            select(locks.c.holder).where(and_(locks.c.name == name, locks.c.key == key))
        ).scalar()
    return None, (str(current) if current else None)


def _held_by(name: str, key: str, holder: str, fence: int) -> Any:
    return and_(
        locks.c.name == name,
        locks.c.key == key,
        locks.c.holder == holder,
        locks.c.fence == fence,
    )


def renew(store: Store, name: str, key: str, holder: str, fence: int, ttl: float) -> bool:
    """Extend a held lease by ``ttl`` from now; False when another holder took it over."""
    with store.begin_write() as conn:
        renewed = conn.execute(
            update(locks)
            .where(_held_by(name, key, holder, fence))
            .values(expires_at=now_sql(store.dialect, ttl))
        ).rowcount
    return bool(renewed)


def release(store: Store, name: str, key: str, holder: str, fence: int) -> bool:
    """Free a lock ``holder`` still holds with ``fence``; False when it had been taken over."""
    with store.begin_write() as conn:
        freed = conn.execute(
            update(locks)
            .where(_held_by(name, key, holder, fence))
            .values(expires_at=RELEASED, holder="")
        ).rowcount
    return bool(freed)


def held(store: Store) -> Sequence[Any]:
    """The rows of locks held now (unexpired by the database's clock), oldest first."""
    store.ensure_schema()
    with store.engine.connect() as conn:
        now = database_now(conn)
        return conn.execute(
            select(locks)
            .where(and_(locks.c.expires_at > now, locks.c.holder != ""))
            .order_by(locks.c.acquired_at)
        ).all()
