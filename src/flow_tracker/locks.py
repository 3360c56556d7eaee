"""Critical sections per key: ``flow_tracker.exclusive(name, key=...)``.

At most one holder per ``(name, key)`` across processes and hosts. The database
decides, in one statement: a row per ``(name, key)`` in ``flow_tracker_locks``
is taken with an upsert that only succeeds when the row is free, expired (by
the database's clock) or already the caller's. Every new holder gets a larger
``fence``; release and renewal name the fence they hold, so a stale holder
(paused past its lease, then woken) can neither free nor extend the lock of
the holder that took over. Rows are kept after release (one per key ever
used) so that fences only grow.

The holder is the current process: for a queued job its process id is derived
from the job id, so a retry of the same job re-enters a lock its earlier attempt
left behind. Outside any process every ``with`` block is a holder of its own.
While it is held, the heartbeat thread (:mod:`flow_tracker.heartbeat`) renews
the lease every ``ttl / 3`` seconds; a holder that dies is taken over once its
lease has run out.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import os
import random
import re
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

from flow_tracker import runtime
from flow_tracker.errors import DatabaseUnavailableError, LockConflictError, Skipped, UsageError
from flow_tracker.heartbeat import HEARTBEAT
from flow_tracker.store import locks as stored_locks
from flow_tracker.store.engine import Store, error_line, is_transient
from flow_tracker.tracker import CURRENT_NODE, Tracker

F = TypeVar("F", bound=Callable[..., Any])
OnConflict = Literal["skip", "raise", "wait"]
_ON_CONFLICT = ("skip", "raise", "wait")
KEY_LIMIT = 255


@dataclass(frozen=True)
class HeldLock:
    """A row of ``flow-tracker locks``: who holds what, since when, until when."""

    name: str
    key: str
    holder: str
    process_id: uuid.UUID | None
    fence: int
    acquired_at: datetime
    expires_at: datetime


class Lease:
    """A lock held by this interpreter: what a ``with exclusive(...)`` block yields.

    Attributes:
        name, key: what is locked.
        fence: grows with every new holder of the key; pass it to systems that can
            refuse writes from an older holder.
        lost: True once a renewal found the lock taken over (the lease ran out
            while this holder was paused).
        released: True once its holder released it (a renewal still on its way
            then finds the row changed, and knows why).
    """

    def __init__(self, name: str, key: str, holder: str, fence: int, ttl: float) -> None:
        self.name, self.key, self.holder, self.fence, self.ttl = name, key, holder, fence, ttl
        self.lost = False
        self.released = False
        self._depth = 1

    def renew(self) -> None:
        """Extend the lease by ``ttl`` from now (called by the heartbeat thread)."""
        if self.lost or self.released:
            return
        if not stored_locks.renew(
            runtime.store(), self.name, self.key, self.holder, self.fence, self.ttl
        ):
            if self.released:
                # Released by its holder while this renewal was on its way (the
                # heartbeat thread had already collected it): not taken over.
                return
            self.lost = True
            HEARTBEAT.remove_lease(self)
            runtime.internal_log.warning(
                "flow-tracker: lock %r for key %r was taken over (fence %d ran out)",
                self.name,
                self.key,
                self.fence,
            )

    def release(self) -> bool:
        """Free the lock if this holder still holds it; False when it had been taken over."""
        self.released = True  # before the row changes: a renewal that misses it then knows why
        HEARTBEAT.remove_lease(self)
        freed = stored_locks.release(runtime.store(), self.name, self.key, self.holder, self.fence)
        if not freed:
            self.lost = True  # another holder has it: this lease was taken over
        return freed

    def __repr__(self) -> str:
        return f"<Lease {self.name!r} {self.key!r} fence={self.fence}>"


# Leases held here, by (name, key, holder): a nested block for the same key re-enters.
_held: dict[tuple[str, str, str], Lease] = {}
_held_lock = threading.Lock()
_held_pid = os.getpid()


def _held_here() -> dict[tuple[str, str, str], Lease]:
    global _held, _held_lock, _held_pid
    if _held_pid != os.getpid():  # a forked child holds nothing of its parent's
        _held, _held_lock, _held_pid = {}, threading.Lock(), os.getpid()
    return _held


def _storable(text: str) -> bool:
    # PostgreSQL text holds neither NUL nor lone surrogates.
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _normalise_key(key: object) -> str:
    text = str(key)
    if len(text) > KEY_LIMIT or not _storable(text):
        # Still one stored key per distinct value, within the column's width.
        return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


def _current_holder() -> tuple[str, uuid.UUID | None]:
    node = CURRENT_NODE.get()
    tracker = getattr(node, "_tracker", None)
    if isinstance(tracker, Tracker):
        return f"process:{tracker._process_id}", tracker._process_id
    return f"block:{uuid.uuid4()}", None


def acquire(name: str, key: str, ttl: float) -> tuple[Lease | None, str | None]:
    """One attempt to take the lock: ``(lease, None)`` or ``(None, current holder)``.

    Raises:
        DatabaseUnavailableError: the database cannot be reached. A lock that cannot
            be checked is not granted: exclusion is the point.
    """
    holder, process_id = _current_holder()
    held = _held_here()
    with _held_lock:
        for (n, k, h), lease in held.items():
            if n == name and k == key and h == holder and not lease.lost:
                lease._depth += 1
                return lease, None
    store = runtime.store()
    try:
        store.ensure_schema()
        fence, current = stored_locks.try_acquire(store, name, key, holder, process_id, ttl)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise DatabaseUnavailableError(
            f"cannot take lock {name!r} for key {key!r}: the tracking database is unreachable "
            f"({type(exc).__name__}: {error_line(exc)})"
        ) from exc
    if fence is None:
        return None, current
    lease = Lease(name, key, holder, fence, ttl)
    with _held_lock:
        held[(name, key, holder)] = lease
    HEARTBEAT.add_lease(lease)
    return lease, None


def release(lease: Lease) -> bool:
    """Leave a block of ``lease``; the lock is freed when its outermost block ends."""
    with _held_lock:
        lease._depth -= 1
        if lease._depth > 0:
            return True
        _held_here().pop((lease.name, lease.key, lease.holder), None)
    try:
        return lease.release()
    except Exception as exc:
        # The lease runs out by itself; a release that could not be stored only delays that.
        runtime.report_internal_error(exc, "releasing a lock")
        return False


class Exclusive:
    """What :func:`exclusive` returns: a ``with`` / ``async with`` block and a decorator."""

    def __init__(
        self,
        name: str,
        key: object,
        ttl: float,
        on_conflict: OnConflict,
        timeout: float | None,
    ) -> None:
        if type(name) is not str or not name or len(name) > KEY_LIMIT or not _storable(name):
            raise UsageError(
                f"lock name must be a non-empty string of at most {KEY_LIMIT} characters "
                "(no NUL, no lone surrogate)"
            )
        if on_conflict not in _ON_CONFLICT:
            raise UsageError(
                f"on_conflict must be one of {', '.join(_ON_CONFLICT)}, not {on_conflict!r}"
            )
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not ttl > 0:
            raise UsageError(f"ttl must be a positive number of seconds, not {ttl!r}")
        if timeout is not None and (
            not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout >= 0
        ):
            raise UsageError(f"timeout must be >= 0 seconds, not {timeout!r}")
        self.name = name
        self.key = key
        self.ttl = float(ttl)
        self.on_conflict = on_conflict
        self.timeout = self.ttl if timeout is None else float(timeout)
        self._stack: list[Lease] = []

    # -- taking the lock ------------------------------------------------------

    def _take(self, key: str) -> Lease | None:
        """The lease, or None when skipping; raises on conflict in the other modes."""
        started, delay = time.monotonic(), 0.02
        while True:
            lease, holder = acquire(self.name, key, self.ttl)
            if lease is not None:
                return lease
            pause = self._pause_after_conflict(key, holder, started, delay)
            if pause is None:
                return None
            time.sleep(pause)
            delay = min(delay * 2, 1.0)

    async def _take_async(self, key: str) -> Lease | None:
        loop = asyncio.get_running_loop()
        started, delay = time.monotonic(), 0.02
        while True:
            lease, holder = await loop.run_in_executor(None, acquire, self.name, key, self.ttl)
            if lease is not None:
                return lease
            pause = self._pause_after_conflict(key, holder, started, delay)
            if pause is None:
                return None
            await asyncio.sleep(pause)
            delay = min(delay * 2, 1.0)

    def _pause_after_conflict(
        self, key: str, holder: str | None, started: float, delay: float
    ) -> float | None:
        """What a refused attempt leads to: None to skip, else seconds before the next.

        Raises:
            LockConflictError: ``on_conflict="raise"``, or waiting ran past ``timeout``.
        """
        waited = time.monotonic() - started
        if self.on_conflict == "skip":
            _mark_skipped(self.name, key, holder)
            return None
        if self.on_conflict == "raise" or waited >= self.timeout:
            raise LockConflictError(self.name, key, holder, waited)
        return min(delay * random.uniform(0.5, 1.5), self.timeout - waited)

    def _block_key(self) -> str:
        if callable(self.key):
            raise UsageError("a key computed from arguments works in the decorator form only")
        return _normalise_key(self.key)

    # -- with / async with ----------------------------------------------------

    def __enter__(self) -> Lease:
        lease = self._take(self._block_key())
        if lease is None:
            raise Skipped(f"skipped: lock {self.name!r} for key {self.key!r} is held")
        self._stack.append(lease)
        return lease

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        release(self._stack.pop())

    async def __aenter__(self) -> Lease:
        lease = await self._take_async(self._block_key())
        if lease is None:
            raise Skipped(f"skipped: lock {self.name!r} for key {self.key!r} is held")
        self._stack.append(lease)
        return lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lease = self._stack.pop()
        await asyncio.get_running_loop().run_in_executor(None, release, lease)

    # -- decorator ------------------------------------------------------------

    def __call__(self, func: F) -> F:
        """Run every call of ``func`` holding the lock; a skipped call returns None.

        ``key`` may be a callable given the call's arguments, or a string with
        ``{argument}`` fields filled from them (``key="{user_id}"``).
        """
        signature = inspect.signature(func)
        key_of = self._key_function(signature)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                lease = await self._take_async(key_of(args, kwargs))
                if lease is None:
                    return None
                try:
                    return await func(*args, **kwargs)
                finally:
                    await asyncio.get_running_loop().run_in_executor(None, release, lease)

            return cast(F, run_async)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            lease = self._take(key_of(args, kwargs))
            if lease is None:
                return None
            try:
                return func(*args, **kwargs)
            finally:
                release(lease)

        return cast(F, run)

    def _key_function(
        self, signature: inspect.Signature
    ) -> Callable[[tuple[Any, ...], Mapping[str, Any]], str]:
        key = self.key
        if callable(key):
            return lambda args, kwargs: _normalise_key(key(*args, **kwargs))
        if isinstance(key, str) and "{" in key:
            _check_template(key, signature)

            var_keyword = next(
                (
                    p.name
                    for p in signature.parameters.values()
                    if p.kind is inspect.Parameter.VAR_KEYWORD
                ),
                None,
            )

            def formatted(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                values = dict(bound.arguments)
                if var_keyword is not None:  # fields may name what **kwargs received
                    values.update(values.pop(var_keyword, None) or {})
                try:
                    return _normalise_key(key.format(**values))
                except (KeyError, AttributeError, IndexError) as exc:
                    # Only possible through **kwargs or an attribute the argument lacks:
                    # the call does not run without its lock.
                    raise UsageError(
                        f"lock key template {key!r} cannot be filled from this call: {exc!r}"
                    ) from None

            return formatted
        fixed = _normalise_key(key)
        return lambda args, kwargs: fixed


def _check_template(template: str, signature: inspect.Signature) -> None:
    """Refuse a key template that could not be filled from a call's arguments.

    Checked when the function is decorated, so that a typo in a job's critical
    section is an error where it is declared, not a job that cannot take its lock.

    Raises:
        UsageError: a malformed template, a positional field (``{}``, ``{0}``) or a
            field naming no parameter of the function.
    """
    try:
        fields = [name for _text, name, _spec, _conv in string.Formatter().parse(template)]
    except ValueError as exc:
        raise UsageError(f"lock key template {template!r} is malformed: {exc}") from None
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for field in fields:
        if field is None:
            continue  # literal text after the last field
        base = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not base or base.isdigit():
            raise UsageError(
                f"lock key template {template!r}: name the argument ({{user_id}}), "
                "positional fields are not supported"
            )
        if base not in parameters and not takes_any:
            known = ", ".join(parameters) or "none"
            raise UsageError(
                f"lock key template {template!r} names {base!r}, which is not an argument "
                f"of the function (its arguments: {known})"
            )


def _mark_skipped(name: str, key: str, holder: str | None) -> None:
    node = CURRENT_NODE.get()
    tracker = getattr(node, "_tracker", None)
    if isinstance(tracker, Tracker):
        by = f" by {holder}" if holder else ""
        tracker.skip(f"lock {name!r} for key {key!r} is held{by}")


def exclusive(
    name: str,
    key: object = "",
    *,
    ttl: float = 60.0,
    on_conflict: OnConflict = "raise",
    timeout: float | None = None,
) -> Exclusive:
    """A critical section: at most one holder of ``(name, key)`` at a time, across hosts.

    ::

        with flow_tracker.exclusive("financial", key=user.id):
            charge(user)

        @flow_tracker.exclusive("financial", key="{user_id}", on_conflict="skip")
        def charge_job(user_id): ...

    Args:
        name: what kind of section (``"financial"``).
        key: which one (a user id...); in the decorator form also a callable given the
            call's arguments, or a ``"{argument}"`` template.
        ttl: seconds the lock stays held if its holder dies; renewed while it lives.
        on_conflict: ``"raise"`` a :class:`LockConflictError`; ``"skip"`` the work (the
            current process ends ``skipped`` with the reason; a block raises
            :class:`Skipped`, which ``track`` blocks swallow); ``"wait"`` up to ``timeout``.
        timeout: seconds to wait in ``"wait"`` mode (default: ``ttl``).

    Raises:
        UsageError: a bad name, ttl, timeout or on_conflict.
    """
    return Exclusive(name, key, ttl, on_conflict, timeout)


def held_locks(store: Store | None = None) -> list[HeldLock]:
    """The locks held now (unexpired by the database's clock), oldest first.

    Args:
        store: the database to read (default: the configured one).
    """
    rows = stored_locks.held(store or runtime.store())
    return [
        HeldLock(
            name=row.name,
            key=row.key,
            holder=row.holder,
            process_id=row.process_id,
            fence=int(row.fence),
            acquired_at=row.acquired_at,
            expires_at=row.expires_at,
        )
        for row in rows
    ]
