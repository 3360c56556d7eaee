"""RetryAfter and step timeouts on Celery, RQ and Dramatiq with real workers, on PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.integrations.workers import worker_process
from tests.workflows import steps
from tests.workflows.helpers import process
from tests.workflows.test_queues import Rig, _env, _wait_all, rig

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
__all__ = ["rig"]  # the fixture, shared with test_queues


def test_a_step_that_asks_for_a_delay_is_sent_again_after_it(
    rig: Rig, pg_server_url: str, tmp_path: Path
) -> None:
    wfs = rig.workflows()
    log = tmp_path / "worker.log"
    key = f"throttled-{uuid.uuid4().hex[:6]}"
    with worker_process(rig.worker, _env(pg_server_url), log):
        run = wfs["throttled"].run(context={"key": key})
        (status,) = _wait_all([run], log)
    step = status.steps["call_api"]
    assert status.status == "completed" and step.attempts == 2, (step.status, step.error)
    assert steps.counts(key) == {"call_api": 2}


def test_a_step_past_its_timeout_is_stopped_by_the_queue_and_stored_as_step_timeout(
    rig: Rig, pg_server_url: str, tmp_path: Path
) -> None:
    wfs = rig.workflows()
    log = tmp_path / "worker.log"
    key = f"timed-{uuid.uuid4().hex[:6]}"
    with worker_process(rig.worker, _env(pg_server_url), log):
        run = wfs["timed"].run(context={"key": key})
        (status,) = _wait_all([run], log)
    step = status.steps["hang"]
    # Each attempt stopped by the queue's own limit, retried once per the policy.
    assert status.status == "failed" and step.attempts == 2, (step.status, step.error)
    assert step.error == "flow_tracker.StepTimeout: timed out after 1 s"
    assert steps.counts(key) == {"hang": 2}
    record = process(step.process_id)
    assert record.status == "failed" and record.error is not None
    assert record.error.type == "flow_tracker.StepTimeout"
