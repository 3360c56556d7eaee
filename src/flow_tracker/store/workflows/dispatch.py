"""What a change to a run sets in motion: the steps to send, and the outbox for those held."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from flow_tracker.ids import process_id_for
from flow_tracker.store import outbox


@dataclass(frozen=True)
class Dispatch:
    """A step to hand to its queue: everything a worker needs to find it."""

    system: str
    workflow: str
    run_id: uuid.UUID
    step: str
    job_id: str
    queue_name: str
    delay: float = 0.0
    first: bool = True
    """The step's first message. Later ones (a retry, a requeue) get a message id
    of their own: a broker may still hold the earlier message under the job id
    (RQ keeps the job, Dramatiq's Redis broker deletes a message's body by id
    when it is acknowledged, which may happen after the retry was sent)."""

    def args(self) -> list[str]:
        """The job's arguments, as every queue's step task takes them."""
        return [self.workflow, str(self.run_id), self.step, self.job_id]

    def message_id(self) -> str:
        """The broker's id for this message: the job id for the first one."""
        return self.job_id if self.first else f"{self.job_id}-{uuid.uuid4().hex[:12]}"

    def process_id(self) -> uuid.UUID:
        """The step's process id (the target of its outbox request)."""
        return process_id_for(self.system, self.job_id)

    def to_payload(self) -> dict[str, Any]:
        """As an outbox request stores it; its delay is the request's due time instead."""
        return {
            "workflow": self.workflow,
            "run_id": str(self.run_id),
            "step": self.step,
            "job_id": self.job_id,
            "queue_name": self.queue_name,
            "first": self.first,
        }

    @classmethod
    def from_payload(cls, system: str, payload: Mapping[str, Any]) -> Dispatch:
        """The dispatch an outbox request stored (:meth:`to_payload`), due now."""
        return cls(
            system,
            str(payload["workflow"]),
            uuid.UUID(str(payload["run_id"])),
            str(payload["step"]),
            str(payload["job_id"]),
            str(payload["queue_name"]),
            0.0,
            bool(payload.get("first", False)),
        )


@dataclass(frozen=True)
class Ended:
    """What storing a step's end (or a manual action) set in motion."""

    dispatches: list[Dispatch]
    run_status: str | None
    """The run's status when it ended in this transaction; None while it goes on."""
    held: bool = False
    """The dispatches were stored in the outbox with the change, for a worker to send."""


NOTHING = Ended([], None)

Hold = Callable[[str, str], bool]
"""Given a run's queue system and workflow: True when this process cannot send its steps,
which then go to the outbox in the transaction of the change (see :mod:`flow_tracker.delivery`)."""


def hold_in(conn: Connection, dispatches: Sequence[Dispatch]) -> None:
    """Store ``dispatches`` as outbox requests in ``conn``'s transaction, due after their delay."""
    for d in dispatches:
        outbox.add(
            conn,
            kind=outbox.STEP,
            job_system=d.system,
            workflow=d.workflow,
            target_id=d.process_id(),
            payload=d.to_payload(),
            due_in=d.delay,
        )


def held(conn: Connection, ended: Ended, hold: Hold | None) -> Ended:
    """``ended``, its dispatches stored in the outbox if ``hold`` says this process cannot send."""
    if hold is None or not ended.dispatches:
        return ended
    first = ended.dispatches[0]
    if not hold(first.system, first.workflow):
        return ended
    hold_in(conn, ended.dispatches)
    return dataclasses.replace(ended, held=True)
