"""Run and step states: spelled once, the same words in the driver SQL, drawn by every page."""

from __future__ import annotations

import inspect
import re

from flow_tracker.status import (
    RUN_FINISHED_STATES,
    STEP_ACTIVE_STATES,
    STEP_DONE_STATES,
    RunState,
    Status,
    StepState,
)
from flow_tracker.store import step_writes
from flow_tracker.store import workflows as stored
from flow_tracker.web import openapi
from flow_tracker.workflows.manage import UNKNOWN_STATUS, known_step_status


def test_stored_words_are_unchanged() -> None:
    # Rows written before the enums existed must still read as the same states.
    assert [s.value for s in RunState] == ["running", "completed", "failed", "cancelled"]
    assert {s.value for s in StepState} == {
        "pending",
        "queued",
        "running",
        "retrying",
        "completed",
        "failed",
        "lost",
        "cancelled",
        "skipped",
        "resolved",
    }


def test_a_run_and_its_process_share_their_words() -> None:
    # A run's process row carries the run's state as a process status.
    assert {s.value for s in RunState} <= {s.value for s in Status}
    assert {s.value for s in StepState} - {s.value for s in Status} == {"pending", "resolved"}


def test_the_store_sets_are_the_enum_sets() -> None:
    assert set(stored.ACTIVE) == {s.value for s in STEP_ACTIVE_STATES}
    assert set(stored.DONE) == {s.value for s in STEP_DONE_STATES}
    assert StepState.PENDING.value == stored.PENDING
    assert StepState.RESOLVED.value == stored.RESOLVED
    assert RunState.RUNNING.value == stored.RUN_RUNNING
    assert RunState.RUNNING.value not in {s.value for s in RUN_FINISHED_STATES}


def test_driver_sql_writes_only_known_states() -> None:
    source = inspect.getsource(step_writes)
    quoted = set(re.findall(r"status (?:=|IN) \(?'(\w+)'", source))
    quoted |= set(re.findall(r"THEN '(\w+)'", source))
    assert quoted, "no status literal found: the pattern no longer matches the SQL"
    known = {s.value for s in StepState} | {s.value for s in RunState}
    assert quoted <= known


def test_every_step_state_has_its_own_diagram_style() -> None:
    for state in StepState:
        assert known_step_status(state.value) == state.value
    assert known_step_status("paused") == UNKNOWN_STATUS


def test_openapi_lists_every_run_state() -> None:
    listing = openapi.document()["paths"]["/api/workflows"]["get"]["parameters"]
    (status,) = [p for p in listing if p["name"] == "status"]
    assert status["schema"]["enum"] == [s.value for s in RunState]
