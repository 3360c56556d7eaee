"""``flow-tracker workflows definitions`` and ``flow-tracker workflows start``.

A start needs only the stored definition: the CLI imports no user code unless
``--import`` says so. Without the queue's integration here the run's first steps
wait in the outbox for a worker of its queue; the command says so and exits 1,
as ``workflows retry`` does, so a script knows nothing was sent from here.
"""

from __future__ import annotations

import json

import click

from flow_tracker.cli.options import (
    database_option,
    echo_json,
    friendly_errors,
    import_modules,
    use_database,
)
from flow_tracker.cli.workflows import _exit_unless_sent, _import_option, workflows
from flow_tracker.errors import UsageError
from flow_tracker.workflows.definitions import list_workflow_definitions
from flow_tracker.workflows.starting import parse_tag_filter, start_workflow


@workflows.command("definitions")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@friendly_errors
def definitions(database_url: str | None, as_json: bool) -> None:
    """Every recorded workflow version: namespace/name, version, queue, steps."""
    use_database(database_url)
    found = list_workflow_definitions()
    if as_json:
        echo_json([d.to_dict() for d in found])
        return
    for d in found:
        steps = ", ".join(str(s.get("name")) for s in d.steps)
        about = f"  {d.description}" if d.description else ""
        click.echo(f"{d.ref}  version {d.version}  on {d.queue}  steps: {steps}{about}")
    if not found:
        click.echo(
            "no workflow recorded yet: a process records the workflows it declares when it "
            "starts a run, runs a step or installs its queue's integration"
        )


def tags_of(values: tuple[str, ...]) -> dict[str, str] | None:
    """``--tag key=value`` options as a dict; a bad one is a UsageError naming it."""
    return dict(parse_tag_filter(value, "=") for value in values) or None


@workflows.command("start")
@database_option
@click.argument("name")
@click.option("--context", "context_json", default="{}", help="The run's context, a JSON object.")
@click.option("--version", default=None, help="The version to start (default: the newest).")
@click.option("--idempotency-key", default=None, help="A repeated key returns the run it started.")
@click.option("--skip", multiple=True, metavar="STEP", help="A step to skip; repeatable.")
@click.option("--tag", multiple=True, metavar="KEY=VALUE", help="A tag of the run; repeatable.")
@click.option("--reason", default=None, help="Why (kept in the run's history).")
@_import_option
@click.option("--json", "as_json", is_flag=True, help="Print the run's id and delivery as JSON.")
@friendly_errors
def start(
    database_url: str | None,
    name: str,
    context_json: str,
    version: str | None,
    idempotency_key: str | None,
    skip: tuple[str, ...],
    tag: tuple[str, ...],
    reason: str | None,
    modules: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start a run of NAME ("namespace/name", or a name in "default") from its definition."""
    try:
        context = json.loads(context_json)
    except (ValueError, RecursionError):
        raise UsageError("--context must be a JSON object, such as '{\"cart_id\": 7}'") from None
    tags = tags_of(tag)
    use_database(database_url)
    import_modules(modules)
    run = start_workflow(
        name,
        context,
        version=version,
        idempotency_key=idempotency_key,
        skip=list(skip) or None,
        tags=tags,
        source="cli",
        reason=reason,
    )
    if as_json:
        echo_json(
            {
                "id": str(run.id),
                "namespace": run.namespace,
                "name": run.name,
                "version": run.version,
                "created": run.created,
                "delivery": run.delivery.status if run.created else "existing run",
                "waiting_for": list(run.delivery.waiting),
            }
        )
    elif not run.created:
        click.echo(
            f"run {run.id} of {run.namespace}/{run.name}: the idempotency key "
            f"{idempotency_key!r} started it before; nothing new was started"
        )
        return
    else:
        fate = "are " + str(run.delivery) if run.delivery.waiting else "were sent"
        click.echo(
            f"run {run.id} of {run.namespace}/{run.name} version {run.version} started: "
            f"its first steps {fate}"
        )
    if run.created:
        _exit_unless_sent(run.delivery)
