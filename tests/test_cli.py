"""The flow-tracker command: init, db upgrade, list, show, status, cleanup, demo."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import flow_tracker
from flow_tracker.cli import main
from flow_tracker.store import migrate


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def record_sample(url: str) -> str:
    flow_tracker.configure(database_url=url, log_to_stdlib=False)
    try:
        with flow_tracker.track("cli sample", metadata={"tenant": "acme"}) as tracker:
            tracker.info("hello from the sample")
            with tracker.flow("outer") as outer, outer.flow("inner") as inner:
                inner.warning("deep", data={"n": 1})
                raise LookupError("missing row")
    except LookupError:
        pass
    flow_tracker.reset()
    return str(tracker.process_id)


def test_init_creates_tables_and_prints_the_app_snippet(
    runner: CliRunner, database_url: str
) -> None:
    result = runner.invoke(main, ["init", "--database-url", database_url])
    assert result.exit_code == 0, result.output
    assert "tables are ready" in result.output
    assert "flow_tracker.configure(" in result.output
    current = runner.invoke(main, ["db", "current", "--database-url", database_url])
    head = migrate.HEAD_REVISION
    assert f"current: {head}" in current.output and f"head:    {head}" in current.output


def test_db_upgrade_is_idempotent(runner: CliRunner, sqlite_url: str) -> None:
    for _ in range(2):
        result = runner.invoke(main, ["db", "upgrade", "--database-url", sqlite_url])
        assert result.exit_code == 0, result.output
        assert f"is at revision {migrate.HEAD_REVISION}" in result.output


def test_unreachable_database_is_one_clear_line_and_exit_code_1(runner: CliRunner) -> None:
    url = "postgresql://postgres@127.0.0.1:1/nowhere"
    for args in (["db", "upgrade"], ["init"], ["list"]):
        result = runner.invoke(main, [*args, "--database-url", url])
        assert result.exit_code == 1
        assert "cannot reach the tracking database" in result.output
        assert "Traceback" not in result.output


def test_bad_url_is_a_clear_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["list", "--database-url", "oracle://scott@db/x"])
    assert result.exit_code == 1 and "supports sqlite, postgresql" in result.output


def test_list_show_and_status(runner: CliRunner, database_url: str) -> None:
    process_id = record_sample(database_url)
    listed = runner.invoke(main, ["list", "--database-url", database_url])
    assert listed.exit_code == 0, listed.output
    assert "cli sample" in listed.output and "failed" in listed.output
    filtered = runner.invoke(
        main, ["list", "--status", "completed", "--database-url", database_url]
    )
    assert "no processes match" in filtered.output
    by_meta = runner.invoke(
        main, ["list", "--meta", "tenant=acme", "--json", "--database-url", database_url]
    )
    assert [row["id"] for row in json.loads(by_meta.output)] == [process_id]

    shown = runner.invoke(main, ["show", process_id, "--database-url", database_url])
    assert shown.exit_code == 0, shown.output
    for text in ("cli sample", "outer", "inner", "deep", "LookupError: missing row", "hello from"):
        assert text in shown.output
    as_json = json.loads(
        runner.invoke(main, ["show", process_id, "--json", "--database-url", database_url]).output
    )
    assert as_json["flows"][0]["children"][0]["logs"][0]["message"] == "deep"

    status = runner.invoke(main, ["status", process_id, "--database-url", database_url])
    assert json.loads(status.output)["status"] == "failed"
    missing = runner.invoke(main, ["status", "nope", "--database-url", database_url])
    assert missing.exit_code == 1 and "no process" in missing.output


def test_cleanup_dry_run_counts_and_cleanup_deletes(runner: CliRunner, sqlite_url: str) -> None:
    record_sample(sqlite_url)
    dry = runner.invoke(main, ["cleanup", "--days", "0", "--dry-run", "--database-url", sqlite_url])
    assert dry.exit_code == 0 and "would delete 1 process " in dry.output
    real = runner.invoke(main, ["cleanup", "--days", "0", "--yes", "--database-url", sqlite_url])
    assert "deleted 1 process " in real.output
    again = runner.invoke(main, ["cleanup", "--days", "0", "--database-url", sqlite_url])
    assert "deleted 0 processes" in again.output


def test_demo_records_every_kind_of_process(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = runner.invoke(main, ["demo", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "processes recorded" in result.output and "nightly_import" in result.output
    flow_tracker.configure(database_url=url)
    # The live demo processes; the week of history before them is at least 10 min old.
    recent = datetime.now(timezone.utc) - timedelta(minutes=5)
    page = flow_tracker.list_processes(limit=100, since=recent)
    history = flow_tracker.list_processes(limit=500, until=recent)
    assert len(history) == 500 and {p.status.value for p in history} == {"completed", "failed"}
    statuses = {p.name: p.status.value for p in page}
    assert statuses["LongRunningSync"] == "running"
    assert statuses["PaymentWebhook"] == "failed"
    assert statuses["MonthlyReport"] == "completed"
    assert statuses["ResizeUploads"] == "lost"  # found by the reaper
    charges = sorted(p.status.value for p in page if p.name == "ChargeCustomer")
    assert charges == ["completed", "skipped"]
    skipped = next(p for p in page if p.name == "ChargeCustomer" and p.status.value == "skipped")
    assert "lock 'financial' for key 'user:103' is held" in skipped.metadata["skip_reason"]
    assert [(lock.name, lock.key) for lock in flow_tracker.locks.held_locks()] == [
        ("account-sync", "shard:3")
    ]
    levels = set()
    for p in page:
        record = flow_tracker.get_process(p.id)
        assert record is not None
        levels |= {e.level for e in record.all_logs()}
    assert levels == {"debug", "info", "warning", "error", "critical"}
    webhook = next(p for p in page if p.name == "PaymentWebhook")
    assert webhook.metadata["api_key"] == "[REDACTED]"
    thumbnails = next(p for p in page if p.name == "generate_thumbnails")
    assert thumbnails.parent_process_id == next(p.id for p in page if p.name == "nightly_import")


@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["show", "some-id"],
        ["status", "some-id"],
        ["locks"],
        ["cleanup"],
        ["health"],
        ["reap"],
        ["requeue", "--lost"],
        ["workflows", "list"],
        ["rollups", "rebuild"],
        ["serve"],
        ["db", "current"],
    ],
)
def test_commands_name_a_missing_sqlite_file_instead_of_creating_it(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "flow_tracker.db"
    result = runner.invoke(main, [*command, "--database-url", f"sqlite:///{missing}"])
    assert result.exit_code == 1, result.output
    assert f"no database at {missing}" in result.output
    assert not missing.exists()


def test_status_json_of_a_failure_has_the_error_without_a_null_traceback(
    runner: CliRunner, sqlite_url: str
) -> None:
    process_id = record_sample(sqlite_url)
    result = runner.invoke(main, ["status", process_id, "--database-url", sqlite_url])
    assert result.exit_code == 0, result.output
    error = json.loads(result.output)["error"]
    assert error == {"type": "LookupError", "message": "missing row"}


def test_events_lists_every_key_a_lost_process_event_carries(runner: CliRunner) -> None:
    result = runner.invoke(main, ["events", "--json"])
    rows = {row["name"]: row for row in json.loads(result.output)}
    keys = {k.strip() for k in rows["process.lost"]["payload"].split(",")}
    published = {"process_id", "name", "category", "job_system", "job_id", "queue"}
    assert published | {"attempt", "status", "time", "reason"} <= keys


def test_list_help_explains_its_filters(runner: CliRunner) -> None:
    result = runner.invoke(main, ["list", "--help"])
    assert "Only processes with this status" in result.output
    assert "Only processes of this category" in result.output


def test_serve_beyond_loopback_without_auth_warns_and_checks_the_host(
    runner: CliRunner, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from starlette.testclient import TestClient

    served: list[Any] = []
    record_sample(sqlite_url)
    # Only the server loop is replaced: everything serve builds is the real app.
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
    result = runner.invoke(
        main,
        [
            *("serve", "--host", "0.0.0.0", "--allowed-host", "jobs.internal"),
            *("--database-url", sqlite_url),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "with no --basic-auth" in result.output
    ((app, options),) = served
    assert options["host"] == "0.0.0.0"
    client = TestClient(app, base_url="http://jobs.internal")
    assert client.get("/api/health").status_code in (200, 503)
    assert client.get("/api/health", headers={"host": "evil.example"}).status_code == 400


def test_serve_trusts_forwarded_addresses_only_from_the_proxy_it_is_told_of(
    runner: CliRunner, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit log's client address: from the connection, unless --proxy names a proxy."""
    import uvicorn

    served: list[dict[str, Any]] = []
    record_sample(sqlite_url)
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(options))
    plain = runner.invoke(main, ["serve", "--database-url", sqlite_url])
    proxied = runner.invoke(
        main,
        ["serve", "--database-url", sqlite_url, "--proxy", "10.0.0.5", "--proxy", "10.0.0.6"],
    )
    assert plain.exit_code == proxied.exit_code == 0, plain.output + proxied.output
    assert served[0]["proxy_headers"] is False
    assert (served[1]["proxy_headers"], served[1]["forwarded_allow_ips"]) == (
        True,
        "10.0.0.5,10.0.0.6",
    )
