"""``flow-tracker workflows``: list, show, diagram, retry, resolve, cancel, and their errors."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from click.testing import CliRunner

import flow_tracker
from flow_tracker.cli import main

WAIT = 30.0


def _failing_run(name: str, fails: list[int]) -> Any:
    wf = flow_tracker.workflow(name)
    wf.step(name="validate")(lambda context: {"total": 42})

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: Any) -> Any:
        if fails:
            fails.pop()
            raise TimeoutError("the gateway timed out")
        return {"paid": validate["total"]}

    wf.step(name="confirm", depends_on=["charge"])(lambda context, charge: charge)
    run = wf.run(context={"cart_id": 7})
    assert run.wait(WAIT).status == "failed"
    return run


def _cli(url: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["workflows", *args, "--database-url", url])


def test_list_show_and_diagram_describe_a_failed_run(tracked: str) -> None:
    run = _failing_run("cli_show", [1])
    listed = _cli(tracked, "list", "--status", "failed")
    assert (
        listed.exit_code == 0
        and "cli_show" in listed.output
        and "failed at charge" in listed.output
    )
    shown = _cli(tracked, "show", str(run.id))
    assert "root cause: step charge failed" in shown.output
    assert "TimeoutError: the gateway timed out" in shown.output
    assert "blocked: upstream charge failed" in shown.output
    as_json = json.loads(_cli(tracked, "show", str(run.id), "--json").output)
    assert as_json["failed_step"] == "charge"
    diagram = _cli(tracked, "diagram", str(run.id))
    assert diagram.output.startswith("flowchart TD") and "class s1 failed" in diagram.output
    assert json.loads(_cli(tracked, "list", "--json").output)[0]["id"] == str(run.id)


def test_retry_resolve_and_cancel_act_and_explain_what_they_refuse(tracked: str) -> None:
    retried = _failing_run("cli_retry", [1])
    out = _cli(tracked, "retry", str(retried.id), "charge", "--reason", "gateway back")
    assert out.exit_code == 0, out.output
    assert retried.wait(WAIT).status == "completed"
    again = _cli(tracked, "retry", str(retried.id), "charge")
    assert again.exit_code == 1 and "is completed, not failed" in again.output

    resolved = _failing_run("cli_resolve", [1, 1])
    bad_json = _cli(tracked, "resolve", str(resolved.id), "charge", "--result", "{nope")
    assert bad_json.exit_code == 1 and "--result must be JSON" in bad_json.output
    out = _cli(tracked, "resolve", str(resolved.id), "charge", "--result", '{"paid": "phone"}')
    assert out.exit_code == 0, out.output
    status = resolved.wait(WAIT)
    assert status.status == "completed" and status.steps["confirm"].result == {"paid": "phone"}

    wf = flow_tracker.workflow("cli_cancel")
    release = threading.Event()
    wf.step(name="slow")(lambda context: release.wait(WAIT))
    wf.step(name="after", depends_on=["slow"])(lambda context, slow: None)
    run = wf.run()
    # Cancel once "slow" runs, so that only "after" is left not to run (on a busy
    # machine the pool may not have taken "slow" yet when the run is sent).
    deadline = time.monotonic() + WAIT
    while flow_tracker.get_workflow(run.id).steps["slow"].status != "running":
        assert time.monotonic() < deadline, "step slow did not start within 30 s"
        time.sleep(0.01)
    out = _cli(tracked, "cancel", str(run.id), "--reason", "customer left")
    release.set()
    assert out.exit_code == 0 and "1 steps will not run" in out.output
    assert run.wait(WAIT).status == "cancelled"
    missing = _cli(tracked, "show", "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 1 and "no workflow run" in missing.output
