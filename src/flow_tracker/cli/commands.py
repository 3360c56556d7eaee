"""The ``flow-tracker`` command: set up the database, look at processes, clean up, demo."""

from __future__ import annotations

import functools
import gc
import json
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

import flow_tracker
from flow_tracker import config, runtime
from flow_tracker.cli import render
from flow_tracker.errors import FlowTrackerError, NotFoundError
from flow_tracker.status import Status
from flow_tracker.store import migrate
from flow_tracker.store.engine import Store, display_url, error_line, parse_url

F = TypeVar("F", bound=Callable[..., Any])

database_option = click.option(
    "--database-url",
    envvar="FLOW_TRACKER_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL of the tracking database [env FLOW_TRACKER_DATABASE_URL; "
    "default sqlite:///flow_tracker.db].",
)

APP_SNIPPET = """\
# Paste where your application starts (e.g. settings.py, app factory, celery worker init):
import flow_tracker

flow_tracker.configure(
    database_url={url!r},
    retention_days=365,
    default_category="jobs",
)

# Then, anywhere:
with flow_tracker.track("MyProcess", category="services", metadata={{"user_id": 123}}) as tracker:
    tracker.log("Starting process")
    with tracker.flow("validate_input") as flow:
        flow.log("Validating...")
"""


def _style() -> render.Style:
    return click.style if sys.stdout.isatty() else render.plain


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


def _use(database_url: str | None, *, must_exist: bool = False) -> None:
    """Point flow-tracker at ``database_url`` (or the environment's) for this command.

    Commands that only read what was recorded (``must_exist``) refuse a SQLite
    file that is not there, instead of creating an empty database and finding
    nothing in it: a wrong folder or a missing ``--database-url`` says so. The
    dashboard, the reaper and ``health`` may come before the first job: they create it.
    """
    options: dict[str, Any] = {"completion_timeout": 5.0}
    if database_url:
        options["database_url"] = database_url
    if must_exist:
        url = parse_url(database_url or config.DEFAULT_DATABASE_URL)
        path = url.database or ""
        a_file = path not in ("", ":memory:") and not path.startswith("file:")
        if url.get_backend_name() == "sqlite" and a_file and not Path(path).exists():
            raise click.ClickException(
                f"no database at {Path(path).resolve()}: nothing was recorded there "
                "(pass --database-url or set FLOW_TRACKER_DATABASE_URL)"
            )
    flow_tracker.configure(verify=True, **options)


@click.group()
@click.version_option(flow_tracker.__version__, prog_name="flow-tracker")
def main() -> None:
    """flow-tracker: see what your background jobs and service processes actually did."""


@main.command()
@database_option
@friendly_errors
def init(database_url: str | None) -> None:
    """Create the tables on the database and print the snippet to paste into your app."""
    url = database_url or flow_tracker.config.settings_from_env().database_url
    store = Store(url, auto_migrate=False)
    store.check_connection()
    migrate.upgrade(store.engine)
    store.dispose()
    click.echo(f"flow-tracker tables are ready on {display_url(store.url)}\n")
    click.echo(APP_SNIPPET.format(url=url))


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@database_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@friendly_errors
def db_upgrade(database_url: str | None, revision: str) -> None:
    """Create or upgrade flow-tracker's tables (the migrations ship in the package)."""
    _migrate_to(database_url, revision, migrate.upgrade)


@db.command("downgrade")
@database_option
@click.argument("revision")
@friendly_errors
def db_downgrade(database_url: str | None, revision: str) -> None:
    """Take flow-tracker's tables back to REVISION (e.g. 0006: unpartitioned tables)."""
    _migrate_to(database_url, revision, migrate.downgrade)


def _migrate_to(database_url: str | None, revision: str, move: Callable[[Any, str], None]) -> None:
    url = database_url or flow_tracker.config.settings_from_env().database_url
    store = Store(url, auto_migrate=False)
    store.check_connection()
    move(store.engine, revision)
    with store.engine.connect() as conn:
        now = migrate.current_revision(conn)
    store.dispose()
    click.echo(f"{display_url(store.url)} is at revision {now}")


@db.command("current")
@database_option
@friendly_errors
def db_current(database_url: str | None) -> None:
    """Print the database's revision and the newest one this version ships."""
    url = database_url or flow_tracker.config.settings_from_env().database_url
    store = Store(url, auto_migrate=False)
    store.check_connection()
    with store.engine.connect() as conn:
        now = migrate.current_revision(conn)
    store.dispose()
    click.echo(f"current: {now or 'none (run flow-tracker db upgrade)'}")
    click.echo(f"head:    {migrate.head_revision()}")


def _parse_since(value: str | None) -> datetime | None:
    if not value:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(timezone.utc) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use 30m, 24h, 7d or an ISO date") from None


@main.command("list")
@database_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Only processes with this status; repeatable.",
)
@click.option(
    "--category",
    "categories",
    multiple=True,
    help="Only processes of this category (jobs, services...); repeatable.",
)
@click.option("--name", default=None, help="Exact process name.")
@click.option("--search", default=None, help="Text in the name or in any log message.")
@click.option("--since", default=None, help="30m, 24h, 7d or an ISO date.")
@click.option("--meta", "meta", multiple=True, help="Metadata filter key=value (JSON values).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@friendly_errors
def list_command(
    database_url: str | None,
    statuses: tuple[str, ...],
    categories: tuple[str, ...],
    name: str | None,
    search: str | None,
    since: str | None,
    meta: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """List processes, newest first."""
    _use(database_url, must_exist=True)
    metadata: dict[str, Any] = {}
    for pair in meta:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: use key=value", param_hint="--meta")
        try:
            metadata[key] = json.loads(raw)
        except ValueError:
            metadata[key] = raw
    page = flow_tracker.list_processes(
        status=statuses or None,
        category=categories or None,
        name=name,
        search=search,
        since=_parse_since(since),
        metadata=metadata or None,
        limit=limit,
    )
    style = _style()
    for p in page:
        click.echo(
            json.dumps(p.to_dict(include_tree=False)) if as_json else render.process_row(p, style)
        )
    if not page.items and not as_json:
        click.echo("no processes match")


@main.command()
@database_option
@click.argument("process_id")
@click.option("--json", "as_json", is_flag=True, help="Print the process and its tree as JSON.")
@friendly_errors
def show(database_url: str | None, process_id: str, as_json: bool) -> None:
    """Show a process as a tree of flows with durations and logs (id or job id)."""
    _use(database_url, must_exist=True)
    status = flow_tracker.get_status(process_id)
    record = flow_tracker.get_process(status.process_id) if status else None
    if record is None:
        raise NotFoundError(f"no process with id or job id {process_id!r}")
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(render.process_tree(record, _style()))


@main.command()
@database_option
@click.argument("process_or_job_id")
@friendly_errors
def status(database_url: str | None, process_or_job_id: str) -> None:
    """Print the status of a process or job (by process id or job id) as JSON."""
    _use(database_url, must_exist=True)
    found = flow_tracker.get_status(process_or_job_id)
    if found is None:
        raise NotFoundError(f"no process with id or job id {process_or_job_id!r}")
    click.echo(found.to_json())


@main.command()
@database_option
@click.option("--days", type=click.FloatRange(min=0), default=None, help="Default: retention_days.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Only these statuses (default: all but queued and running).",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@friendly_errors
def cleanup(
    database_url: str | None, days: float | None, statuses: tuple[str, ...], dry_run: bool
) -> None:
    """Delete processes older than N days with their flows and logs."""
    _use(database_url, must_exist=True)
    age = days if days is not None else flow_tracker.config.current().retention_days
    count = flow_tracker.cleanup(age, statuses=statuses or None, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {count} process{'es' if count != 1 else ''} older than {age:g} days")


@main.command()
@click.option(
    "--database-url",
    default="sqlite:///flow_tracker_demo.db",
    show_default=True,
    help="Where to record the demo processes.",
)
@click.option(
    "--keep", is_flag=True, help="Add to an existing demo database instead of starting fresh."
)
@click.option(
    "--serve/--no-serve",
    default=None,
    help="Open the dashboard on the demo data afterwards (default: when run in a terminal).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@friendly_errors
def demo(database_url: str, keep: bool, serve: bool | None, port: int) -> None:
    """Record a realistic set of sample processes, then show them in the dashboard."""
    from flow_tracker.cli.demo import run_demo

    run_demo(database_url, fresh=not keep, echo=click.echo, style=_style())
    runtime.shutdown()
    if serve is None:
        serve = sys.stdin.isatty() and sys.stdout.isatty()
    if serve:
        _serve(database_url, "127.0.0.1", port, read_only=False, basic_auth=None)


def _serve(
    database_url: str | None,
    host: str,
    port: int,
    *,
    read_only: bool,
    basic_auth: tuple[str, str] | None,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    try:
        import uvicorn

        from flow_tracker.web import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"{exc}. The dashboard needs: pip install 'flow-tracker[web]'"
        ) from None
    from flow_tracker.web.security import LOOPBACK_HOSTS, serving_hosts

    _use(database_url)
    if host not in LOOPBACK_HOSTS and basic_auth is None:
        click.echo(
            f"warning: serving on {host} with no --basic-auth: anyone who can reach this "
            "host can read every job and run its actions (give --basic-auth or --read-only, "
            "or put it behind your own auth)",
            err=True,
        )
    app = create_app(
        read_only=read_only,
        basic_auth=basic_auth,
        allowed_hosts=serving_hosts(host, allowed_hosts),
    )
    click.echo(f"\nflow-tracker dashboard: http://{host}:{port}/   (Ctrl+C to stop)\n")
    # What was made so far (modules, the app) lives as long as the process: out of the
    # collector's sight, a full collection walks only what requests made since. Pages
    # that hold thousands of rows (a large workflow run) trigger one every few
    # requests, and walking the whole heap each time was most of their p95.
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="warning")


@main.command()
@database_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--read-only", is_flag=True, help="Hide and refuse every action (cleanup, reap, requeue)."
)
@click.option(
    "--basic-auth",
    envvar="FLOW_TRACKER_BASIC_AUTH",
    default=None,
    metavar="USER:PASSWORD",
    help="Require HTTP basic auth [env FLOW_TRACKER_BASIC_AUTH].",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Another host name the dashboard answers to (besides loopback and --host); "
    "'*.example.com' matches subdomains; repeatable.",
)
@friendly_errors
def serve(
    database_url: str | None,
    host: str,
    port: int,
    read_only: bool,
    basic_auth: str | None,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve the web dashboard (overview, processes, detail, cleanup, JSON API)."""
    credentials = None
    if basic_auth is not None:
        user, sep, password = basic_auth.partition(":")
        if not sep or not user or not password:
            raise click.BadParameter("expected USER:PASSWORD", param_hint="--basic-auth")
        credentials = (user, password)
    _serve(
        database_url,
        host,
        port,
        read_only=read_only,
        basic_auth=credentials,
        allowed_hosts=allowed_hosts,
    )


if __name__ == "__main__":  # pragma: no cover
    main()


# -- recovery and locks -------------------------------------------------------


def _import_modules(modules: tuple[str, ...]) -> None:
    """Import the user's modules that install integrations (needed to requeue)."""
    import importlib

    sys.path.insert(0, ".")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise click.ClickException(
                f"cannot import {name}: {type(exc).__name__}: {exc}"
            ) from None


@main.command()
@database_option
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Run again every SECONDS until interrupted (default: once).",
)
@click.option(
    "--lost-after",
    type=click.FloatRange(min=0.001),
    default=None,
    help="Seconds without heartbeat [default: the lost_after setting].",
)
@click.option(
    "--import",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Module that installs an integration, so that jobs a dying worker had taken "
    "from the broker are found too (RQ; Celery on Redis); repeatable.",
)
@friendly_errors
def reap(
    database_url: str | None,
    every: float | None,
    lost_after: float | None,
    modules: tuple[str, ...],
) -> None:
    """Mark running processes whose heartbeat stopped as lost."""
    _use(database_url)
    _import_modules(modules)
    while True:
        result = flow_tracker.reap(lost_after=lost_after)
        stamp = result.checked_at.strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{stamp}  lost: {len(result.lost)}  stale queued: {result.stale_queued}")
        for process_id in result.lost:
            click.echo(f"  lost {process_id}")
        if every is None:
            return
        import time

        time.sleep(every)


@main.command()
@database_option
@click.argument("process_ids", nargs=-1)
@click.option("--lost", "which", flag_value="lost", help="Every lost job not requeued yet.")
@click.option("--failed", "which", flag_value="failed", help="Every failed job not requeued yet.")
@click.option(
    "--import",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Module that installs the integration (e.g. myapp.celery_app); repeatable.",
)
@friendly_errors
def requeue(
    database_url: str | None,
    process_ids: tuple[str, ...],
    which: str | None,
    modules: tuple[str, ...],
) -> None:
    """Enqueue lost or failed jobs again, through their own queue, with their stored arguments."""
    if bool(process_ids) == bool(which):
        raise click.UsageError("give process ids, or one of --lost / --failed")
    _use(database_url)
    _import_modules(modules)
    ids: list[Any] = list(process_ids)
    if which:
        ids = flow_tracker.recovery.requeue_candidates(Status(which))
    results = flow_tracker.requeue(ids)
    failed = 0
    for result in results:
        detail = f" -> {result.new_process_id}" if result.new_process_id else ""
        reason = f" ({result.reason})" if result.reason else ""
        click.echo(f"{result.process_id}  {result.outcome}{detail}{reason}")
        failed += not result.ok
    click.echo(f"{len(results) - failed} of {len(results)} enqueued")
    if any(r.outcome == "integration_not_installed" for r in results):
        click.echo(
            "hint: pass --import MODULE, the module of your app that calls the queue's "
            "install() (e.g. --import myapp.celery_app)",
            err=True,
        )
    if failed:
        sys.exit(1)


@main.command()
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def health(database_url: str | None, as_json: bool) -> None:
    """Lost, silent and stale jobs; exit code 0 when healthy, 1 otherwise."""
    _use(database_url)
    report = flow_tracker.health()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        oldest = report.oldest_queued_age_s
        last = report.last_reap.strftime("%Y-%m-%d %H:%M:%S") if report.last_reap else "never"
        click.echo(f"{'healthy' if report.healthy else 'UNHEALTHY'}")
        click.echo(f"  running:       {report.running} ({report.silent} without heartbeat)")
        click.echo(f"  lost (24 h):   {report.lost} not requeued")
        click.echo(f"  stale queued:  {report.stale_queued}")
        click.echo(f"  oldest queued: {'-' if oldest is None else f'{oldest:.0f} s'}")
        click.echo(f"  last reap:     {last}")
    sys.exit(0 if report.healthy else 1)


@main.command("events")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def events_command(as_json: bool) -> None:
    """The events flow_tracker.on() and subscribers get, with their payloads."""
    from flow_tracker.subscribers import describe_catalog

    for row in describe_catalog():
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"{row['name']:<19} {row['description']}")
            click.echo(f"{'':<19} payload: {row['payload']}")


@main.command("locks")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@friendly_errors
def locks_command(database_url: str | None, as_json: bool) -> None:
    """Locks of flow_tracker.exclusive held now."""
    _use(database_url, must_exist=True)
    from flow_tracker.locks import held_locks

    held = held_locks()
    for lock in held:
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "name": lock.name,
                        "key": lock.key,
                        "holder": lock.holder,
                        "process_id": None if lock.process_id is None else str(lock.process_id),
                        "fence": lock.fence,
                        "acquired_at": lock.acquired_at.isoformat(),
                        "expires_at": lock.expires_at.isoformat(),
                    }
                )
            )
        else:
            click.echo(
                f"{lock.name}  {lock.key}  held by {lock.holder}  fence {lock.fence}  "
                f"since {lock.acquired_at:%H:%M:%S}  until {lock.expires_at:%H:%M:%S}"
            )
    if not held and not as_json:
        click.echo("no locks held")
