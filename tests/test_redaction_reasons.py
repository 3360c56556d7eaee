"""The reasons of retry, resolve and cancel are stored redacted and clean, on both databases.

A reason is anyone's text, typed into the dashboard: a secret in it would be
shown on every page of the run, and a NUL or a lone surrogate, which PostgreSQL
refuses, would fail the action itself.
"""

from __future__ import annotations

import uuid
from typing import Any

import flow_tracker
from flow_tracker.redaction import REDACTED
from flow_tracker.workflows.manage import REASON_LIMIT

WAIT = 30.0  # generous: a busy machine; the runs end in milliseconds when idle
HOSTILE = "password=hunter2 at postgresql://u:pw@h/db nul\x00 lone\ud800 end"
CLEAN = f"password={REDACTED} at postgresql://u:{REDACTED}@h/db nul\\u0000 lone\\ud800 end"


def failed_run(name: str) -> Any:
    """A run whose only step has failed (and fails again when retried)."""
    wf = flow_tracker.workflow(name)

    @wf.step()
    def charge(context: Any) -> None:
        raise TimeoutError("the gateway timed out")

    run = wf.run()
    assert run.wait(WAIT).status == "failed"
    return run


def history(run_id: uuid.UUID) -> list[tuple[str, str | None]]:
    """The run's state history as stored: (status, reason)."""
    record = flow_tracker.get_process(run_id)
    assert record is not None
    return [(change.status, change.reason) for change in record.history]


def test_a_retry_reason_is_stored_without_secrets_nul_or_surrogates(tracked: str) -> None:
    run = failed_run("reasons_retry")
    flow_tracker.retry_step(run.id, "charge", by="alice", reason=HOSTILE)
    assert run.wait(WAIT).status == "failed"  # it failed again, as it always does
    assert ("retried", f"retried step charge by alice: {CLEAN}") in history(run.id)


def test_a_resolve_reason_is_stored_without_secrets_nul_or_surrogates(tracked: str) -> None:
    run = failed_run("reasons_resolve")
    flow_tracker.resolve_step(run.id, "charge", result={"paid": True}, by="bob", reason=HOSTILE)
    assert run.wait(WAIT).status == "completed"
    assert ("resolved", f"resolved step charge by bob: {CLEAN}") in history(run.id)


def test_a_cancel_reason_and_who_are_stored_without_secrets_nul_or_surrogates(
    tracked: str,
) -> None:
    run = failed_run("reasons_cancel")
    assert flow_tracker.cancel_workflow(run.id, by="carol\x00", reason=HOSTILE) == 0
    assert flow_tracker.get_workflow(run.id).status == "cancelled"
    assert ("cancelled", f"cancelled by carol\\u0000: {CLEAN}") in history(run.id)


def test_a_long_reason_is_cut_to_the_limit_after_its_escapes(tracked: str) -> None:
    run = failed_run("reasons_long")
    # Each NUL becomes six characters: cut before cleaning, this would be far over.
    flow_tracker.cancel_workflow(run.id, by="dave", reason="\x00" * REASON_LIMIT)
    [reason] = [r for s, r in history(run.id) if s == "cancelled" and r and " by " in r]
    assert len(reason) == REASON_LIMIT
    assert reason.startswith("cancelled by dave: \\u0000") and "\x00" not in reason
