"""``flow-tracker workflows``: list runs, show one, retry or resolve a step, cancel, diagram."""

from __future__ import annotations

import difflib
import json
import sys
import uuid
from datetime import datetime, timezone
from typing import Any

import click

from flow_tracker.cli.commands import main
from flow_tracker.cli.options import (
    database_option,
    echo_json,
    echo_next_page,
    friendly_errors,
    import_modules,
    terminal_style,
    use_database,
)
from flow_tracker.cli.render import duration
from flow_tracker.delivery import Delivery
from flow_tracker.errors import UsageError
from flow_tracker.workflows import manage

_import_option = click.option(
    "--import",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Module that declares the workflow and installs its queue's integration "
    "(needed to send the step); repeatable.",
)
_COLOURS = {
    "completed": "green",
    "resolved": "green",
    "failed": "red",
    "lost": "magenta",
    "running": "blue",
    "queued": "cyan",
    "retrying": "yellow",
    "cancelled": "white",
}


@main.group()
def workflows() -> None:
    """Workflow runs: list, show, retry, resolve, cancel, diagram."""


@workflows.command("list")
@database_option
@click.option("--name", default=None, help="Only runs of this workflow.")
@click.option(
    "--status",
    type=click.Choice(["running", "completed", "failed", "cancelled"]),
    default=None,
    help="Only runs in this status.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--cursor", default=None, help="The next page: the cursor the previous one printed.")
@click.option(
    "--tag", multiple=True, metavar="KEY=VALUE", help="Only runs with this tag; repeatable."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@friendly_errors
def list_runs(
    database_url: str | None,
    name: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    tag: tuple[str, ...],
    as_json: bool,
) -> None:
    """Runs newest first, with steps done of total and the failed step (see --cursor)."""
    from flow_tracker.workflows.starting import parse_tag_filter

    tags = dict(parse_tag_filter(value, "=") for value in tag) or None
    use_database(database_url)
    runs = manage.list_workflows(
        name=name, status=status, limit=limit, before=_before(cursor), tags=tags
    )
    last = runs[-1] if len(runs) == limit else None
    # The same cursor as the API's next_cursor (GET /api/workflows?before=...).
    next_cursor = f"{last['created_at']}|{last['id']}" if last else None
    if as_json:
        echo_json(runs)
        echo_next_page(next_cursor, as_json=True)
        return
    _print_runs(runs)
    echo_next_page(next_cursor, as_json=False)


def _before(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The (created_at, id) a ``--cursor`` names, or None for the first page."""
    if not cursor:
        return None
    moment, _sep, ident = cursor.partition("|")
    try:
        when, run_id = datetime.fromisoformat(moment), uuid.UUID(ident)
    except ValueError:
        raise click.BadParameter(
            "not a cursor this command printed: start from the first page", param_hint="--cursor"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when, run_id


def _print_runs(runs: list[dict[str, Any]]) -> None:
    style = terminal_style()
    for run in runs:
        failed = f"  failed at {run['failed_step']}" if run["failed_step"] else ""
        status = style(run["status"].ljust(9), fg=_COLOURS.get(run["status"]))
        click.echo(
            f"{run['created_at'][:19]}  {status}"
            f"  {run['name']}  {run['steps_done']}/{run['steps_total']} steps"
            f"  {duration(run['duration_ms'])}  {run['id']}{failed}"
        )
    if not runs:
        click.echo("no workflow runs")


@workflows.command()
@database_option
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def show(database_url: str | None, run_id: str, as_json: bool) -> None:
    """A run and each step: status, attempts, why it waits, result or error."""
    use_database(database_url)
    data = manage.shown(manage.get_workflow(run_id))  # each step says if it waits for a worker
    if as_json:
        echo_json(data)
        return
    style = terminal_style()
    head = f"{data['name']}  {style(data['status'], fg=_COLOURS.get(data['status']))}  {data['id']}"
    click.echo(head)
    if data["failed_step"]:
        click.echo(f"  root cause: step {data['failed_step']} failed")
    click.echo(f"  context: {_short(data['context'])}")
    for step in data["steps"]:
        status = step["status"]
        line = f"  {style(status.ljust(9), fg=_COLOURS.get(status))} {step['name']}"
        line += f"  attempts {step['attempts']}" if step["attempts"] > 1 else ""
        line += f"  {duration(step['duration_ms'])}" if step["duration_ms"] is not None else ""
        click.echo(line + _why(step))


def _why(step: dict[str, Any]) -> str:
    if step.get("delivery"):  # queued here but not sent: no worker of its queue took it yet
        return f"  {step['delivery']} (for {step['delivery_waiting_s']:.0f} s)"
    if step["status"] == "resolved":
        # A resolved step keeps the error of its failed attempt; what goes on is the
        # result it was given.
        return f"  resolved by hand -> {_short(step['result'])}"
    if step["status"] == "pending":
        if step["blocked_by"]:
            return f"  blocked: upstream {step['blocked_by']} failed"
        return f"  waiting for {', '.join(step['depends_on'])}"
    if step["status"] == "retrying" and step["next_attempt_at"]:
        return f"  next attempt at {step['next_attempt_at'][11:19]}  ({step['error']})"
    if step["error"]:
        return f"  {step['error']}"
    if step["result"] is not None:
        return f"  -> {_short(step['result'])}"
    return ""


def _short(value: Any, width: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _known_step(run_id: str, step: str) -> None:
    """Refuse a step the run does not have, naming the nearest one and the run's steps.

    Raises:
        UsageError: no step of that name in the run.
    """
    steps = list(manage.get_workflow(run_id).steps)
    if step in steps:
        return
    near = difflib.get_close_matches(step, steps, n=1)
    guess = f"did you mean {near[0]!r}? " if near else ""
    raise UsageError(f"run {run_id} has no step {step!r}: {guess}its steps: {', '.join(steps)}")


@workflows.command()
@database_option
@click.argument("run_id")
@click.argument("step")
@click.option("--reason", default=None, help="Why (kept in the run's history).")
@_import_option
@friendly_errors
def retry(
    database_url: str | None, run_id: str, step: str, reason: str | None, modules: tuple[str, ...]
) -> None:
    """Run a failed STEP again, then whatever waits on it."""
    use_database(database_url)
    _known_step(run_id, step)
    import_modules(modules)
    delivery = manage.retry_step(run_id, step, reason=reason)
    click.echo(f"step {step} of run {run_id} retried: {delivery}")
    _exit_unless_sent(delivery)


@workflows.command("retry-failed")
@database_option
@click.argument("run_id")
@click.option("--reason", default=None, help="Why (kept in the run's history).")
@_import_option
@friendly_errors
def retry_failed(
    database_url: str | None, run_id: str, reason: str | None, modules: tuple[str, ...]
) -> None:
    """Run every failed step of RUN_ID again, then whatever waits on them."""
    use_database(database_url)
    import_modules(modules)
    retried = manage.retry_failed_steps(run_id, reason=reason)
    click.echo(
        f"{len(retried.steps)} failed step(s) of run {run_id} retried "
        f"({', '.join(retried.steps)}): {retried.delivery}"
    )
    _exit_unless_sent(retried.delivery)


def _exit_unless_sent(delivery: Delivery) -> None:
    """Exit 1 when a message waits in the outbox: nothing was sent from here."""
    if delivery.ok:
        return
    click.echo(
        "hint: a live worker of that queue sends it within a second or so; pass --import MODULE "
        "(the module of your app that calls the queue's install()) to send it from here",
        err=True,
    )
    sys.exit(1)


@workflows.command()
@database_option
@click.argument("run_id")
@click.argument("step")
@click.option("--result", "result_json", default="null", help="The step's result, as JSON.")
@click.option("--reason", default=None, help="Why (kept in the run's history).")
@_import_option
@friendly_errors
def resolve(
    database_url: str | None,
    run_id: str,
    step: str,
    result_json: str,
    reason: str | None,
    modules: tuple[str, ...],
) -> None:
    """Mark a failed STEP done with --result, so that what waits on it goes on."""
    try:
        result = json.loads(result_json)
    except ValueError as exc:
        raise UsageError(f"--result must be JSON: {exc}") from None
    use_database(database_url)
    _known_step(run_id, step)
    import_modules(modules)
    delivery = manage.resolve_step(run_id, step, result=result, reason=reason)
    click.echo(f"step {step} of run {run_id} resolved: what waits on it {delivery}")
    _exit_unless_sent(delivery)


@workflows.command()
@database_option
@click.argument("run_id")
@click.option("--reason", default=None, help="Why (kept in the run's history).")
@friendly_errors
def cancel(database_url: str | None, run_id: str, reason: str | None) -> None:
    """Cancel a run: no step that has not started starts."""
    use_database(database_url)
    if manage.get_workflow(run_id).status == "cancelled":
        click.echo(f"run {run_id} was already cancelled: nothing changed")
        return
    count = manage.cancel_workflow(run_id, reason=reason)
    click.echo(f"run {run_id} cancelled ({count} steps will not run)")


@workflows.command()
@database_option
@click.argument("run_id")
@friendly_errors
def diagram(database_url: str | None, run_id: str) -> None:
    """The run as Mermaid flowchart text (paste it into any Mermaid viewer)."""
    use_database(database_url)
    click.echo(manage.workflow_diagram(run_id), nl=False)
