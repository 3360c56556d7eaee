"""``flow-tracker audit``: who did what, newest first.

Reads the audit log the dashboard shows on ``/audit``: every action of the
dashboard, the API, the CLI and the library, allowed, refused or failed.
Whoever runs the command reaches the database, which is admin already.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import click

from flow_tracker import runtime
from flow_tracker.cli.commands import main
from flow_tracker.cli.compare import safe
from flow_tracker.cli.options import (
    database_option,
    echo_json,
    echo_next_page,
    friendly_errors,
    parse_since,
    use_database,
)
from flow_tracker.store import audit as stored_audit

DETAIL_WIDTH = 100


def _line(entry: stored_audit.AuditEntry) -> str:
    """One row for a terminal: anyone's names and targets made safe to print."""
    when = entry.at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    times = f" x{entry.times}" if entry.times > 1 else ""
    parts = [
        when,
        f"{entry.outcome:<7}{times}",
        safe(entry.action, 64),
        f"{safe(entry.actor, 60)} ({safe(entry.via, 60)}, {safe(entry.role, 32)})",
    ]
    if entry.target:
        parts.append(safe(entry.target, 80))
    if entry.client:
        parts.append(f"from {safe(entry.client, 60)}")
    line = "  ".join(parts)
    if entry.detail:
        detail = json.dumps(entry.detail, ensure_ascii=False, sort_keys=True)
        line += "\n    " + safe(detail, DETAIL_WIDTH)
    return line


def _moment(value: str | None, option: str) -> datetime | None:
    try:
        return parse_since(value)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint=option) from None


@main.command("audit")
@database_option
@click.option("--actor", default=None, help="Only this actor's rows (the exact name).")
@click.option("--action", default=None, help="Only this action, e.g. jobs:requeue.")
@click.option(
    "--outcome",
    default=None,
    type=click.Choice(stored_audit.OUTCOMES),
    help="Only allowed, refused or failed actions.",
)
@click.option("--target", default=None, help="Only rows about this run, process or token.")
@click.option("--since", default=None, help="30m, 24h, 7d or an ISO date.")
@click.option("--until", default=None, help="30m, 24h, 7d (ago) or an ISO date.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--cursor", default=None, help="The next page: the cursor the previous one printed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@friendly_errors
def audit_command(
    database_url: str | None,
    actor: str | None,
    action: str | None,
    outcome: str | None,
    target: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Who did what: the audit log, newest first (a page at a time: see --cursor)."""
    use_database(database_url)
    page = stored_audit.list_entries(
        runtime.store(),
        actor=actor,
        action=action,
        outcome=outcome,
        target=target,
        since=_moment(since, "--since"),
        until=_moment(until, "--until"),
        limit=limit,
        cursor=cursor,
    )
    if as_json:
        rows: list[dict[str, Any]] = [entry.to_dict() for entry in page]
        echo_json(rows)
    else:
        for entry in page:
            click.echo(_line(entry))
        if not page.entries:
            click.echo("no audit rows match")
    echo_next_page(page.next_cursor, as_json=as_json)
