"""Runs whose every payload holds a secret of its own: what payload hiding is tested on.

Each secret is a plain word with digits, under a key no redaction rule touches,
so that a principal with ``payloads:read`` sees every one of them somewhere and
one without must see none of them anywhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

import flow_tracker
from flow_tracker import runtime
from flow_tracker.jobs import record_enqueued
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import processes
from flow_tracker.tracker import Tracker
from flow_tracker.workflows.status import WorkflowRun

WAIT = 30.0
WORKFLOW = "hiding_checkout"
NAMESPACE = "shop"
LOG_MESSAGE = "charging the card"
"""A log message: visible to everyone, payloads or not."""

SECRETS: dict[str, str] = {
    "metadata": "quokka-meta-4411",
    "baseline metadata": "quokka-basemeta-4421",
    "flow metadata": "quokka-flowmeta-4412",
    "job args": "quokka-args-4413",
    "job kwargs": "quokka-kwargs-4422",
    "log data": "quokka-logdata-4414",
    "error message": "quokka-error-4415",
    "flow error": "quokka-flowerror-4416",
    "skip reason": "quokka-skip-4423",
    "context": "quokka-context-4417",
    "step result": "quokka-result-4418",
    "step error": "quokka-steperror-4419",
    "resolve result": "quokka-resolve-4420",
}


class CardDeclined(Exception):
    """The error of the failing process and of the failing workflow step."""


class GatewayTimeout(Exception):
    """The error of a flow the process recovered from."""


@dataclass(frozen=True)
class Recorded:
    """Ids of what :func:`record` stored."""

    url: str
    failed: str
    """A failed process: metadata, log data, a flow's metadata and error, its own error."""
    baseline: str
    """A completed process of the same name (what ``failed`` is compared with)."""
    skipped: str
    """A process skipped with a reason."""
    lost_job: str
    """A lost queued job with arguments."""
    job_id: str
    completed_run: str
    """A workflow run that completed: its context and step results."""
    failed_run: str
    """A run whose step failed with an error message."""
    resolved_run: str
    """A run whose failed step was resolved by hand with a result."""
    failed_step: str
    """The process of ``failed_run``'s failed step."""

    @property
    def process_ids(self) -> list[str]:
        """Every process id recorded (runs and steps are processes too)."""
        return [
            self.failed,
            self.baseline,
            self.skipped,
            self.lost_job,
            self.completed_run,
            self.failed_run,
            self.resolved_run,
            self.failed_step,
        ]

    @property
    def run_ids(self) -> list[str]:
        """Every workflow run id recorded."""
        return [self.completed_run, self.failed_run, self.resolved_run]


def _processes() -> tuple[str, str, str]:
    with flow_tracker.track(
        "Checkout", category="billing", metadata={"tenant": SECRETS["baseline metadata"]}
    ) as tracker:
        tracker.info(LOG_MESSAGE)
        baseline = str(tracker.process_id)
    with contextlib.suppress(CardDeclined):
        with flow_tracker.track(
            "Checkout", category="billing", metadata={"tenant": SECRETS["metadata"]}
        ) as tracker:
            failed = str(tracker.process_id)
            tracker.info(LOG_MESSAGE, data={"card": SECRETS["log data"]})
            with contextlib.suppress(GatewayTimeout):
                with tracker.flow("call_gateway", metadata={"ref": SECRETS["flow metadata"]}):
                    raise GatewayTimeout(SECRETS["flow error"])
            raise CardDeclined(SECRETS["error message"])
    with flow_tracker.track("Nightly", category="jobs") as tracker:
        assert isinstance(tracker, Tracker)  # tracking is on: a real tracker, which can skip
        tracker.skip(SECRETS["skip reason"])
        skipped = str(tracker.process_id)
    return failed, baseline, skipped


def _lost_job() -> str:
    process_id = record_enqueued(
        job_system="rq",
        job_id="resize-1",
        name="Resize",
        queue="media",
        args=[SECRETS["job args"]],
        kwargs={"note": SECRETS["job kwargs"]},
    )
    assert process_id is not None
    with runtime.store().engine.begin() as conn:
        conn.execute(
            update(processes)
            .where(processes.c.id == process_id)
            .values(status="lost", finished_at=database_now(conn))
        )
    return str(process_id)


def _workflow() -> Any:
    wf = flow_tracker.workflow(WORKFLOW, namespace=NAMESPACE)

    @wf.step()
    def validate(context: Any) -> dict[str, str]:
        return {"receipt": SECRETS["step result"]}

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: Any) -> dict[str, int]:
        if context.get("fail"):
            raise CardDeclined(f"card refused: {SECRETS['step error']}")
        return {"paid": 1}

    @wf.step(depends_on=["charge"])
    def confirm(context: Any, charge: Any) -> Any:
        return charge

    return wf


def record(url: str) -> Recorded:
    """Record every kind of payload, each holding its secret; flushed when it returns."""
    failed, baseline, skipped = _processes()
    lost_job = _lost_job()
    wf = _workflow()
    completed = wf.run(context={"customer": SECRETS["context"]}).wait(WAIT)
    failed_run = wf.run(context={"customer": SECRETS["context"], "fail": True}).wait(WAIT)
    to_resolve = wf.run(context={"customer": SECRETS["context"], "fail": True}).wait(WAIT)
    assert (completed.status, failed_run.status, to_resolve.status) == (
        "completed",
        "failed",
        "failed",
    )
    flow_tracker.resolve_step(
        to_resolve.id, "charge", result={"manual": SECRETS["resolve result"]}, reason="by phone"
    )
    resolved = WorkflowRun(to_resolve.id, WORKFLOW).wait(WAIT)  # its last step runs now
    assert resolved.status == "completed"
    flow_tracker.flush()
    step = failed_run.steps["charge"].process_id
    assert step is not None
    return Recorded(
        url=url,
        failed=failed,
        baseline=baseline,
        skipped=skipped,
        lost_job=lost_job,
        job_id="resize-1",
        completed_run=str(completed.id),
        failed_run=str(failed_run.id),
        resolved_run=str(resolved.id),
        failed_step=str(step),
    )
