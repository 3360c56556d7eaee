"""``flow-tracker tokens``: create, list and revoke the dashboard API's tokens.

Tokens are managed here only, never over HTTP: whoever runs these
commands can reach the database, which is admin already. Each create and revoke
is written to the audit log as the command's operating-system user.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta

import click

from flow_tracker import runtime
from flow_tracker.cli.commands import main
from flow_tracker.cli.options import database_option, echo_json, friendly_errors, use_database
from flow_tracker.store import tokens as stored_tokens

_DURATION = re.compile(r"([0-9]{1,7})([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta:
    """``30m``, ``12h``, ``90d`` or ``2w`` as a timedelta; a clear error for anything else."""
    match = _DURATION.fullmatch(value.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(
            f"{value[:40]!r}: give a positive number and a unit: 30m, 12h, 90d or 2w",
            param_hint="--expires",
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _when(moment: datetime | None, never: str = "-") -> str:
    return never if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def _checked_role(_context: click.Context, _param: click.Parameter, value: str) -> str:
    # Not a click.Choice: "admin" deserves its own answer, not "not one of ...".
    if value == "admin":
        raise click.BadParameter(
            "no admin tokens: a token is viewer, reader or operator "
            "(admin actions are for people, on the dashboard or this command line)"
        )
    if value not in stored_tokens.TOKEN_ROLES:
        raise click.BadParameter(f"{value[:40]!r}: choose {', '.join(stored_tokens.TOKEN_ROLES)}")
    return value


@main.group()
def tokens() -> None:
    """API tokens for /api/* and /metrics: create (shown once), list, revoke."""


@tokens.command("create")
@database_option
@click.option("--name", required=True, help="A name for who uses it (ci, grafana...); unique.")
@click.option(
    "--role",
    required=True,
    metavar="|".join(stored_tokens.TOKEN_ROLES),
    callback=_checked_role,
    help="What it may do: viewer (runs), reader (+ payloads), operator (+ actions).",
)
@click.option(
    "--expires",
    default=None,
    metavar="DURATION",
    help="Stop working after 30m, 12h, 90d, 2w... [default: never, until revoked].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the token and its record as JSON.")
@friendly_errors
def create(
    database_url: str | None, name: str, role: str, expires: str | None, as_json: bool
) -> None:
    """Make a token and print it, once: it is stored hashed and cannot be shown again.

    Only the token goes to stdout (TOKEN=$(flow-tracker tokens create ...) keeps
    it); what to do with it goes to stderr.
    """
    expires_in = None if expires is None else parse_duration(expires)
    use_database(database_url)
    made = stored_tokens.create(runtime.store(), name=name, role=role, expires_in=expires_in)
    record = made.record
    if as_json:
        echo_json({"token": made.token, **record.to_dict()})
    else:
        click.echo(made.token)
    until = _when(record.expires_at, never="never (until revoked)")
    click.echo(
        f"created token {record.name!r}: role {record.role}, expires {until}.\n"
        "It will not be shown again: store it now (only a hash of it is kept).\n"
        "Send it to the dashboard's /api/* and /metrics as the header\n"
        "  Authorization: Bearer <the token>",
        err=True,
    )


@tokens.command("list")
@database_option
@click.option("--all", "include_revoked", is_flag=True, help="Revoked tokens too.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@friendly_errors
def list_command(database_url: str | None, include_revoked: bool, as_json: bool) -> None:
    """The tokens, oldest first: name, role, created, expires, last used, status."""
    use_database(database_url)
    found = stored_tokens.list_tokens(runtime.store(), include_revoked=include_revoked)
    if as_json:
        echo_json([record.to_dict() for record in found])
        return
    if not found:
        click.echo(
            "no tokens" if include_revoked else "no active tokens (--all shows revoked ones)"
        )
        return
    width = max(4, *(len(record.name) for record in found))
    click.echo(
        f"{'NAME':<{width}}  {'ROLE':<8}  {'CREATED':<20}  {'EXPIRES':<20}  "
        f"{'LAST USED':<20}  STATUS"
    )
    for record in found:
        status = record.status
        if record.revoked_at is not None:
            status = f"revoked {_when(record.revoked_at)} by {record.revoked_by or '-'}"
        click.echo(
            f"{record.name:<{width}}  {record.role:<8}  {_when(record.created_at):<20}  "
            f"{_when(record.expires_at, 'never'):<20}  {_when(record.last_used_at, 'never'):<20}  "
            f"{status}"
        )


@tokens.command("revoke")
@database_option
@click.argument("name")
@friendly_errors
def revoke(database_url: str | None, name: str) -> None:
    """Revoke the token NAME: refused from the next request on; the name is free again."""
    use_database(database_url)
    done = stored_tokens.revoke(runtime.store(), name)
    if not done:
        click.echo(
            f"no active token named {name[:120]!r}: nothing revoked "
            "(flow-tracker tokens list shows them)",
            err=True,
        )
        sys.exit(1)
    click.echo(f"revoked token {name.strip()!r}: it is refused from now on")
