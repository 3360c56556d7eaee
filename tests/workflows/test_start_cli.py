"""``flow-tracker workflows definitions`` and ``workflows start``: from the stored definition."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner

import flow_tracker
from flow_tracker import job_systems
from flow_tracker.cli import main
from flow_tracker.workflows import definitions

WAIT = 30.0


def _cli(url: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["workflows", *args, "--database-url", url])


@pytest.fixture(autouse=True)
def _no_celery_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Play the CLI of a host without Celery's integration, in this process.

    Earlier tests of the run may have installed it in this interpreter; its
    sender would then publish at once, and nothing would wait for a worker.
    """
    monkeypatch.delitem(job_systems._systems, "celery", raising=False)


def _recorded(name: str, queue: str = "celery") -> Any:
    """A workflow recorded by "another process": declared on a queue not installed here."""
    wf = flow_tracker.workflow(name, queue=queue, namespace="pay", version="4", description="two")
    wf.step(name="charge")(lambda context: 1)
    wf.step(name="email", depends_on=["charge"])(lambda context, charge: 2)
    definitions.ensure_recorded(wf)
    return wf


def test_definitions_lists_every_recorded_version(tracked: str) -> None:
    _recorded("cli_defs")
    listed = _cli(tracked, "definitions")
    assert listed.exit_code == 0, listed.output
    assert "pay/cli_defs  version 4  on celery  steps: charge, email  two" in listed.output
    as_json = json.loads(_cli(tracked, "definitions", "--json").output)
    assert [d["version"] for d in as_json if d["name"] == "cli_defs"] == ["4"]


def test_start_says_the_first_steps_wait_and_exits_non_zero(tracked: str) -> None:
    _recorded("cli_start")
    started = _cli(
        tracked,
        "start",
        "pay/cli_start",
        "--context",
        '{"cart": 1}',
        "--tag",
        "customer=c-9",
        "--idempotency-key",
        "cart-1",
        "--reason",
        "asked again",
    )
    assert started.exit_code == 1, started.output
    assert "version 4 started: its first steps are waiting for a worker of celery" in started.output
    again = _cli(tracked, "start", "pay/cli_start", "--idempotency-key", "cart-1")
    assert again.exit_code == 0, again.output
    assert "started it before; nothing new was started" in again.output
    [run] = flow_tracker.list_workflows(tags={"customer": "c-9"})
    listed = _cli(tracked, "list", "--tag", "customer=c-9")
    assert listed.exit_code == 0 and run["id"] in listed.output
    assert run["id"] not in _cli(tracked, "list", "--tag", "customer=other").output
    history = flow_tracker.get_process(run["id"])
    assert history is not None
    assert "via cli: asked again" in (history.history[0].reason or "")


def test_start_sends_the_first_steps_where_the_workflow_runs_here(tracked: str) -> None:
    wf = _recorded("cli_here", queue="threads")
    started = _cli(tracked, "start", "pay/cli_here", "--skip", "email", "--json")
    assert started.exit_code == 0, started.output
    data = json.loads(started.output)
    assert (data["created"], data["delivery"]) == (True, "sent")
    status = flow_tracker.WorkflowRun(uuid.UUID(data["id"]), wf.name).wait(WAIT)
    assert (status.steps["charge"].status, status.steps["email"].status) == (
        "completed",
        "resolved",
    )


def test_start_refuses_bad_input_with_the_reason(tracked: str) -> None:
    _recorded("cli_bad")
    for args, says in [
        (("--skip", "nope"), "no step 'nope' to skip; its steps: charge, email"),
        (("--context", "[1]"), "a dict (a JSON object)"),
        (("--context", "{nope"), "--context must be a JSON object"),
        (("--tag", "nokey"), "key=value"),
        (("--version", "9"), "no version '9'; its versions: '4'"),
    ]:
        refused = _cli(tracked, "start", "pay/cli_bad", *args)
        assert refused.exit_code == 1, args
        assert says in refused.output, (args, refused.output)
    unknown = _cli(tracked, "start", "pay/nothing")
    assert unknown.exit_code == 1 and "no workflow pay/nothing" in unknown.output
    assert flow_tracker.list_workflows() == []
