"""``flow-tracker workflows``: list runs, show one, retry or resolve a step, cancel, diagram."""

from __future__ import annotations

import json
from typing import Any

import click

from flow_tracker.cli.commands import (
    _import_modules,
    _style,
    _use,
    database_option,
    friendly_errors,
    main,
)
from flow_tracker.cli.render import duration
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def list_runs(
    database_url: str | None, name: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    """Runs newest first, with steps done of total and the failed step."""
    _use(database_url, must_exist=True)
    runs = manage.list_workflows(name=name, status=status, limit=limit)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    style = _style()
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
    _use(database_url, must_exist=True)
    data = manage.shown(manage.get_workflow(run_id))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    style = _style()
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
    _use(database_url, must_exist=True)
    _import_modules(modules)
    manage.retry_step(run_id, step, reason=reason)
    click.echo(f"step {step} of run {run_id} queued again")


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
    _use(database_url, must_exist=True)
    _import_modules(modules)
    manage.resolve_step(run_id, step, result=result, reason=reason)
    click.echo(f"step {step} of run {run_id} resolved")


@workflows.command()
@database_option
@click.argument("run_id")
@click.option("--reason", default=None, help="Why (kept in the run's history).")
@friendly_errors
def cancel(database_url: str | None, run_id: str, reason: str | None) -> None:
    """Cancel a run: no step that has not started starts."""
    _use(database_url, must_exist=True)
    count = manage.cancel_workflow(run_id, reason=reason)
    click.echo(f"run {run_id} cancelled ({count} steps will not run)")


@workflows.command()
@database_option
@click.argument("run_id")
@friendly_errors
def diagram(database_url: str | None, run_id: str) -> None:
    """The run as Mermaid flowchart text (paste it into any Mermaid viewer)."""
    _use(database_url, must_exist=True)
    click.echo(manage.workflow_diagram(run_id), nl=False)
