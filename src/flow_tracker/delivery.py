"""Every action delivers, or says it has not.

A workflow step to send or a lost job to enqueue again is published at once
where this process has the queue's integration installed; otherwise (the
dashboard under ``flow-tracker serve``, the CLI without ``--import``, a
script), or when the broker refuses it, it is stored in the outbox
(:mod:`flow_tracker.store.outbox`) — in the transaction of the change it
announces wherever that change is made here — and a live worker of that queue
publishes it: every process whose integration is installed runs a small
delivery thread that polls the outbox about every second (:data:`POLL_SECONDS`)
and publishes what it can, recording who delivered it. The in-process pool
(``threads``) delivers only steps of workflows its own process declares: a
dashboard or a CLI never runs a step.

What an action did is a :class:`Delivery`: ``sent``, or ``waiting for a worker
of <queue>`` — never "queued" while nothing was sent.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from flow_tracker import config, runtime
from flow_tracker.store import outbox
from flow_tracker.store.engine import Store, error_line

_log = logging.getLogger("flow_tracker.delivery")

POLL_SECONDS = float(os.environ.get("FLOW_TRACKER_DELIVERY_POLL", "1.0"))
# How long a claimed request is kept from other workers while one publishes it.
LEASE_SECONDS = 30.0
# The pauses before a failed publish is tried again: doubling, up to the last.
BACKOFF = (1.0, 60.0)


@dataclass(frozen=True)
class Delivery:
    """What became of an action's messages: all sent, or some waiting in the outbox."""

    sent: int = 0
    """Messages published by this call."""
    waiting: tuple[str, ...] = ()
    """The queue systems whose messages wait in the outbox for a worker."""
    error: str | None = None
    """Why a publish tried here failed (the message waits in the outbox)."""
    waiting_count: int = 0
    """How many messages wait in the outbox (0 where a caller did not count them)."""

    @property
    def ok(self) -> bool:
        """True when nothing waits: every message was sent (or there was none)."""
        return not self.waiting

    @property
    def status(self) -> str:
        """``sent``, ``nothing to send`` or ``waiting``."""
        if self.waiting:
            return "waiting"
        return "sent" if self.sent else "nothing to send"

    @property
    def message(self) -> str:
        """For people: ``sent`` or ``waiting for a worker of celery`` (with the broker's error)."""
        if not self.waiting:
            return self.status
        text = waiting_for(*self.waiting)
        return f"{text} (publishing here failed: {self.error})" if self.error else text

    def __str__(self) -> str:
        return self.message

    def __add__(self, other: Delivery) -> Delivery:
        waiting = tuple(dict.fromkeys(self.waiting + other.waiting))
        return Delivery(
            self.sent + other.sent,
            waiting,
            self.error or other.error,
            self.waiting_count + other.waiting_count,
        )


NOTHING_SENT = Delivery()


def waiting_for(*systems: str) -> str:
    """``waiting for a worker of celery``: the one wording of an undelivered request."""
    return "waiting for a worker of " + " and ".join(dict.fromkeys(systems))


def who() -> str:
    """The name an outbox row gives this process as its deliverer: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff(attempts: int) -> float:
    """Seconds before try ``attempts + 1`` of a request whose publish failed."""
    first, last = BACKOFF
    return float(min(last, first * 2 ** max(0, min(attempts - 1, 16))))


# -- the workers' side ------------------------------------------------------------------


def deliver_pending(*, store: Store | None = None, limit: int = 100) -> int:
    """Publish the due outbox requests this process can publish; return how many were sent.

    What the delivery thread does each second; callable directly (a test, a
    cron job). Never raises for one request: its failure stays on its row.
    """
    from flow_tracker.job_systems import requeue_systems
    from flow_tracker.workflows.engine import sending_systems, served_threads_workflows

    settings = config.in_force() if store is None else config.current()
    if settings is None or not settings.enabled:
        return 0  # between configurations (reset): no database to poll, none to create
    steps = sending_systems()
    requeues = requeue_systems()
    workflows = served_threads_workflows()
    if not (steps or requeues or workflows):
        return 0
    chosen = store or runtime.store()
    chosen.ensure_schema()
    claimed = outbox.claim(
        chosen,
        steps=steps,
        requeues=requeues,
        workflows=workflows,
        lease=LEASE_SECONDS,
        limit=limit,
    )
    return sum(1 for request in claimed if _deliver(chosen, request))


def _deliver(store: Store, request: outbox.Claimed) -> bool:
    """Publish one claimed request; mark it sent, or keep it pending with its error."""
    try:
        if request.kind == outbox.STEP:
            _deliver_step(request)
            sent = outbox.mark_sent(store, request.id, who())
        else:
            from flow_tracker.recovery import deliver_requeue

            sent = deliver_requeue(store, request)
        return sent
    except Exception as exc:
        try:
            outbox.mark_failed(store, request.id, error_line(exc), backoff(request.attempts))
        except Exception as internal:  # the lease runs out and the request is tried again
            runtime.report_internal_error(internal, "recording a failed delivery")
        _log.warning(
            "delivering %s to %s failed (try %d, tried again later): %s",
            request.kind,
            request.job_system,
            request.attempts,
            error_line(exc),
        )
        return False


def _deliver_step(request: outbox.Claimed) -> None:
    from flow_tracker.store.workflows import Dispatch
    from flow_tracker.workflows.engine import sender_here

    dispatch = Dispatch.from_payload(request.job_system, request.payload)
    sender = sender_here(dispatch.system, dispatch.workflow)
    if sender is None:  # uninstalled since the claim: another worker takes it after the lease
        raise RuntimeError(f"this process no longer sends {dispatch.system} steps")
    sender(dispatch)


class _Relay:
    """The delivery thread of this interpreter, started by a queue's install."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.rounds = 0

    def start(self) -> None:
        """Start the thread (once per process; again in a forked child)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._pid, self._thread = os.getpid(), None
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="flow-tracker-delivery", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while self._thread is me and self._pid == os.getpid():
            self.wake.wait(POLL_SECONDS)
            self.wake.clear()
            try:
                with _POLLING:  # a fork waits for the poll (see _hold_polls_across_fork)
                    deliver_pending()
            except Exception as exc:
                # The database away, a schema not made yet: polled again next second.
                # Logged, not counted: an outage would count once a second for nothing.
                _log.debug("polling the outbox failed: %s", error_line(exc))
            self.rounds += 1


RELAY = _Relay()

# A poll holds the database driver's locks (SQLite's own mutexes among them) while it
# runs; a fork in that instant would copy them held into the child, whose first query
# then waits forever. A fork waits for the poll in progress instead (milliseconds).
_POLLING = threading.RLock()  # re-entrant: a poll that forks must not wait for itself


def _hold_polls_across_fork() -> None:
    _POLLING.acquire()


def _release_polls_after_fork() -> None:
    _POLLING.release()


os.register_at_fork(
    before=_hold_polls_across_fork,
    after_in_parent=_release_polls_after_fork,
    after_in_child=_release_polls_after_fork,
)


def serve() -> None:
    """Deliver this process's share of the outbox from now on (called by each queue's install)."""
    config.current()  # the settings of this worker (its environment) are the ones it delivers with
    RELAY.start()


@dataclass(frozen=True)
class Waiting:
    """A target's request not sent yet, as a page, the API or the CLI shows it."""

    message: str
    """``waiting for a worker of <queue>``."""
    since: datetime
    """When the request was stored (the database's clock)."""
    last_error: str | None
    """Why the last publish failed, when one was tried."""

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds it has waited until ``now`` (default: this host's clock)."""
        moment = now or datetime.now(timezone.utc)
        return max(0.0, (moment - self.since).total_seconds())


def waiting(
    targets: Iterable[uuid.UUID], *, store: Store | None = None
) -> dict[uuid.UUID, Waiting]:
    """The pending request of each target that has one, in one query.

    Targets are step processes (a step to send) or lost jobs (a requeue to send).
    """
    found = outbox.pending_for(store or runtime.store(), list(targets))
    return {
        target: Waiting(waiting_for(p.job_system), p.created_at, p.last_error)
        for target, p in found.items()
    }


def pending_for(
    targets: Iterable[uuid.UUID], *, store: Store | None = None
) -> dict[uuid.UUID, str]:
    """``waiting for a worker of <queue>`` for each target with a pending request.

    Targets are step processes (a step to send) or lost jobs (a requeue to send).
    """
    return {target: w.message for target, w in waiting(targets, store=store).items()}


__all__ = [
    "Delivery",
    "Waiting",
    "deliver_pending",
    "pending_for",
    "serve",
    "waiting",
    "waiting_for",
]
