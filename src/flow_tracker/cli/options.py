"""What every ``flow-tracker`` command shares: the database option, errors, output, imports.

Public so that each command module (``commands``, ``workflows``, ``audit``,
``tokens``, ``compare``...) takes them from one place, and a team adding its own
command on :data:`flow_tracker.cli.main` can too.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

import flow_tracker
from flow_tracker import config
from flow_tracker.cli import render
from flow_tracker.errors import FlowTrackerError
from flow_tracker.store.engine import error_line, parse_url

F = TypeVar("F", bound=Callable[..., Any])

database_option = click.option(
    "--database-url",
    envvar="FLOW_TRACKER_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL of the tracking database [env FLOW_TRACKER_DATABASE_URL; "
    "default sqlite:///flow_tracker.db].",
)
"""``--database-url``: the tracking database, else ``FLOW_TRACKER_DATABASE_URL``."""


def terminal_style() -> render.Style:
    """How the command colours its text: colours on a terminal, plain text in a pipe."""
    return click.style if sys.stdout.isatty() else render.plain


def echo_json(value: Any) -> None:
    """Print ``value`` as one JSON document: every ``--json`` prints exactly one.

    The convention, for every command: a list is a JSON array (``[]`` when nothing
    matches), one thing is an object. A list with more pages says so on stderr
    (:func:`echo_next_page`), so stdout stays one document for ``jq`` or a script.
    """
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def echo_next_page(cursor: str | None, *, as_json: bool) -> None:
    """Say how to ask for the next page, when there is one (stderr under ``--json``)."""
    if cursor:
        click.echo(f"next page: --cursor {cursor}", err=as_json)


def friendly_errors(command: F) -> F:
    """Turn our errors and database errors into one clear line and exit code 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FlowTrackerError as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:
            raise click.ClickException(f"database error: {error_line(exc)}") from None

    return run  # type: ignore[return-value]


def use_database(database_url: str | None) -> None:
    """Point flow-tracker at ``database_url`` (or the environment's) for this command.

    Every command that works on what was recorded (all but ``init``, ``db`` and
    ``demo``, which create the database) refuses a SQLite file that is not there,
    instead of creating an empty database and finding nothing in it: a probe or a
    cron job that forgot ``FLOW_TRACKER_DATABASE_URL`` fails loudly rather than
    reporting "healthy" on a new empty file.
    """
    options: dict[str, Any] = {"completion_timeout": 5.0}
    if database_url:
        options["database_url"] = database_url
    missing = missing_sqlite_file(database_url or config.DEFAULT_DATABASE_URL)
    if missing is not None:
        if not database_url:
            raise click.ClickException(
                "no tracking database configured: pass --database-url or set "
                f"FLOW_TRACKER_DATABASE_URL (the default, {config.DEFAULT_DATABASE_URL}, "
                f"is not in {Path.cwd()})"
            )
        raise click.ClickException(
            f"no database at {missing}: nothing was recorded there (check --database-url "
            "or FLOW_TRACKER_DATABASE_URL; `flow-tracker init` creates it)"
        )
    flow_tracker.configure(verify=True, **options)


def missing_sqlite_file(database_url: str) -> Path | None:
    """The absolute path of ``database_url``'s SQLite file when it does not exist, else None."""
    url = parse_url(database_url)
    path = url.database or ""
    a_file = path not in ("", ":memory:") and not path.startswith("file:")
    if url.get_backend_name() == "sqlite" and a_file and not Path(path).exists():
        return Path(path).resolve()
    return None


def import_modules(modules: tuple[str, ...]) -> None:
    """Import the user's modules that install integrations (needed to requeue)."""
    sys.path.insert(0, ".")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise click.ClickException(
                f"cannot import {name}: {type(exc).__name__}: {exc}"
            ) from None


def parse_since(value: str | None) -> datetime | None:
    """``30m``, ``24h``, ``7d`` or an ISO date as a moment; None when not given."""
    if not value:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(timezone.utc) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use 30m, 24h, 7d or an ISO date") from None
