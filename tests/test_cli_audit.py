"""The CLI in the audit log: its actions as ``cli:<user>@<host>``, and ``flow-tracker audit``.

On SQLite and PostgreSQL; workflows run on the in-process pool of this test.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from click.testing import CliRunner
from sqlalchemy import insert

import flow_tracker
from flow_tracker import runtime
from flow_tracker.actors import Actor, cli_actor, current_actor
from flow_tracker.cli import main
from flow_tracker.store import audit
from flow_tracker.store.clock import database_now
from flow_tracker.store.schema import processes

WAIT = 30.0
SECRET = "s3cr3t-" + uuid.uuid4().hex


def _cli(url: str, *args: str) -> Any:
    return CliRunner().invoke(main, [*args, "--database-url", url])


def _failed_run(name: str) -> uuid.UUID:
    wf = flow_tracker.workflow(name)
    wf.step(name="validate")(lambda context: 1)

    @wf.step(depends_on=["validate"])
    def charge(context: Any, validate: Any) -> None:
        raise TimeoutError("the gateway timed out")

    wf.step(name="confirm", depends_on=["charge"])(lambda context, charge: charge)
    run = wf.run(context={"card": SECRET})
    assert run.wait(WAIT).status == "failed"
    return run.id


def _lost_job() -> uuid.UUID:
    """A lost job of a queue not installed here, its arguments holding the secret."""
    store = runtime.store()
    store.ensure_schema()
    ident = uuid.uuid4()
    with store.engine.begin() as conn:
        conn.execute(
            insert(processes).values(
                id=ident,
                name="charge",
                category="jobs",
                status="lost",
                created_at=database_now(conn),
                job_system="cliauditq",
                job_id=uuid.uuid4().hex,
                job_payload={"func": "app.charge", "args": [SECRET]},
            )
        )
    return ident


def test_cli_actions_are_audited_as_the_os_user_at_this_host(tracked: str) -> None:
    run_id = _failed_run("cli_audit_actions")
    lost = _lost_job()
    resolved = _cli(
        tracked,
        "workflows",
        "resolve",
        str(run_id),
        "charge",
        "--result",
        json.dumps({"card": SECRET}),
        "--reason",
        "paid by phone password=hunter2",
    )
    assert resolved.exit_code == 0, resolved.output
    assert _cli(tracked, "requeue", str(lost)).exit_code == 1  # waits for a worker: says so
    assert _cli(tracked, "reap").exit_code == 0
    assert _cli(tracked, "cleanup", "--days", "0", "--yes").exit_code == 0
    listed = _cli(tracked, "audit", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    me = cli_actor()
    assert me.via.startswith(f"cli:{me.name}@")
    assert [(r["action"], r["outcome"]) for r in reversed(rows)] == [
        ("workflows:resolve", "allowed"),
        ("jobs:requeue", "allowed"),
        ("jobs:reap", "allowed"),
        ("history:delete", "allowed"),
    ]
    assert {(r["actor"], r["via"], r["role"]) for r in rows} == {(me.name, me.via, "admin")}
    assert rows[-1]["target"] == str(run_id) and rows[-2]["target"] == str(lost)
    assert SECRET not in listed.output and "hunter2" not in listed.output
    assert current_actor().via == "library"  # the command's actor ended with it


def test_the_history_of_a_cli_action_says_the_os_user(tracked: str) -> None:
    run_id = _failed_run("cli_audit_history")
    assert _cli(tracked, "workflows", "retry", str(run_id), "charge").exit_code == 0
    record = flow_tracker.get_process(run_id)
    assert record is not None
    reasons = [t.reason for t in record.history]
    assert f"retried step charge by {cli_actor().name}" in reasons


def test_the_audit_command_filters_pages_and_prints_hostile_names_safely(tracked: str) -> None:
    store = runtime.store()
    store.ensure_schema()
    hostile = Actor("evil\x1b[31m\x00name", role="viewer", via="token:ci")
    for n in range(3):
        audit.record(store, action="jobs:requeue", target=f"p{n}", outcome="allowed")
    audit.record_refusal(store, action="history:delete", target="/cleanup", actor=hostile)
    refused = _cli(tracked, "audit", "--outcome", "refused")
    assert refused.exit_code == 0
    assert "\x1b" not in refused.output and "\\x1b[31m" in refused.output
    assert "history:delete" in refused.output and "jobs:requeue" not in refused.output
    first = _cli(tracked, "audit", "--action", "jobs:requeue", "--limit", "2", "--json")
    assert [r["target"] for r in json.loads(first.stdout)] == ["p2", "p1"]
    cursor = first.stderr.strip().rsplit(" ", 1)[-1]
    rest = _cli(tracked, "audit", "--action", "jobs:requeue", "--json", "--cursor", cursor)
    assert [r["target"] for r in json.loads(rest.stdout)] == ["p0"]
    assert json.loads(_cli(tracked, "audit", "--actor", "nobody", "--json").output) == []
    bad = _cli(tracked, "audit", "--since", "last tuesday")
    assert bad.exit_code == 2 and "--since" in bad.output
    broken = _cli(tracked, "audit", "--cursor", "not-a-cursor")
    assert broken.exit_code == 1 and "invalid cursor" in broken.output
