"""The ``flow-tracker`` command: set up the database, look at processes, clean up, demo."""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import click

import flow_tracker
from flow_tracker import config, runtime
from flow_tracker.actors import acting_as, cli_actor
from flow_tracker.cli import render
from flow_tracker.cli.options import (
    database_option,
    echo_json,
    echo_next_page,
    friendly_errors,
    import_modules,
    missing_sqlite_file,
    parse_since,
    terminal_style,
    use_database,
)
from flow_tracker.cli.terminal import confirm_or_refuse, progress_bar
from flow_tracker.delivery import waiting_for
from flow_tracker.errors import NotFoundError
from flow_tracker.status import Status
from flow_tracker.store import audit, migrate, queries
from flow_tracker.store.engine import Store, display_url, parse_url

APP_SNIPPET = """\
# Paste where your application starts (e.g. settings.py, app factory, celery worker init):
import flow_tracker

flow_tracker.configure(
{where}    retention_days=365,
    default_category="jobs",
)

# Then, anywhere:
with flow_tracker.track("MyProcess", category="services", metadata={{"user_id": 123}}) as tracker:
    tracker.log("Starting process")
    with tracker.flow("validate_input") as flow:
        flow.log("Validating...")
"""


@click.group()
@click.version_option(flow_tracker.__version__, prog_name="flow-tracker")
@click.pass_context
def main(ctx: click.Context) -> None:
    """flow-tracker: see what your background jobs and service processes actually did."""
    # Every command acts as its OS user on this host (``cli:<user>@<host>`` in the
    # audit log), until the command has run: the group's callback returns before it.
    ctx.with_resource(acting_as(cli_actor()))


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
    click.echo(APP_SNIPPET.format(where=_url_in_snippet(url)))


def _url_in_snippet(url: str) -> str:
    """The snippet's ``database_url`` line: the URL itself, unless it holds a password.

    A password pasted into settings ends up in version control; flow-tracker reads
    ``FLOW_TRACKER_DATABASE_URL`` by itself, so the snippet points there instead.
    """
    if parse_url(url).password:
        return (
            "    # database_url: read from $FLOW_TRACKER_DATABASE_URL. Set it in the app's\n"
            "    # environment (it holds the password), never in code.\n"
        )
    return f"    database_url={url!r},\n"


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@database_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@friendly_errors
def db_upgrade(database_url: str | None, revision: str) -> None:
    """Create or upgrade flow-tracker's tables (the migrations ship in the package)."""
    _migrate_to(database_url, revision, _upgrade_step_by_step)


def _upgrade_step_by_step(engine: Any, revision: str) -> None:
    """Upgrade one revision at a time, with a bar in a terminal (a big install takes a while)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    with engine.connect() as conn:
        current = migrate.current_revision(conn)
    target = script.get_current_head() if revision == "head" else revision
    pending = [r.revision for r in script.iterate_revisions(target, current)]
    pending.reverse()  # iterate_revisions walks down from the target
    if len(pending) < 2:
        migrate.upgrade(engine, revision)
        return
    with progress_bar(f"upgrading to {target}") as advance:
        for done, step in enumerate(pending, start=1):
            migrate.upgrade(engine, step)
            advance(done, len(pending))


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
    missing = missing_sqlite_file(url)
    if missing is not None:
        raise click.ClickException(f"no database at {missing} (`flow-tracker db upgrade` makes it)")
    store = Store(url, auto_migrate=False)
    store.check_connection()
    with store.engine.connect() as conn:
        now = migrate.current_revision(conn)
    store.dispose()
    click.echo(f"current: {now or 'none (run flow-tracker db upgrade)'}")
    click.echo(f"head:    {migrate.head_revision()}")


@main.group()
def rollups() -> None:
    """The hourly and daily rollups the dashboard's charts and analytics read."""


@rollups.command("rebuild")
@database_option
@click.option(
    "--since",
    default=None,
    help="First day to rebuild: 30m, 24h, 7d or an ISO date [default: the first finished run].",
)
@friendly_errors
def rollups_rebuild(database_url: str | None, since: str | None) -> None:
    """Roll up every finished run again: after a restore, an import or a long outage.

    The charts count a run in the hour it finished, rolled up once that hour has
    closed; rows stored more than two hours late (restored, imported, kept in a
    worker's memory through an outage) are in the lists but not in the charts
    until this runs. The dashboard keeps answering meanwhile.
    """
    from flow_tracker.store import rollups as stored_rollups

    use_database(database_url)
    store = runtime.store()
    with progress_bar("rolling up days") as advance:
        done = stored_rollups.rebuild(
            store, queries.database_time(store), since=parse_since(since), progress=advance
        )
    if done.start is None:
        click.echo(
            "nothing finished yet: no rollups to rebuild"
            if since is None
            else f"no closed hour since {since}: nothing to rebuild"
        )
        return
    click.echo(
        f"rebuilt the rollups of {done.days} day{'s' if done.days != 1 else ''} "
        f"({done.start:%Y-%m-%d} to {done.until:%Y-%m-%d %H:%M} UTC)"
    )


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
@click.option("--cursor", default=None, help="The next page: the cursor the previous one printed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
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
    cursor: str | None,
    as_json: bool,
) -> None:
    """List processes, newest first (a page at a time: see --cursor)."""
    use_database(database_url)
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
        since=parse_since(since),
        metadata=metadata or None,
        limit=limit,
        cursor=cursor,
    )
    if as_json:
        echo_json([p.to_dict(include_tree=False) for p in page])
    else:
        style = terminal_style()
        for p in page:
            click.echo(render.process_row(p, style))
        if not page.items:
            click.echo("no processes match")
    echo_next_page(page.next_cursor, as_json=as_json)


@main.command()
@database_option
@click.argument("process_id")
@click.option("--json", "as_json", is_flag=True, help="Print the process and its tree as JSON.")
@friendly_errors
def show(database_url: str | None, process_id: str, as_json: bool) -> None:
    """Show a process as a tree of flows with durations and logs (id or job id)."""
    use_database(database_url)
    status = flow_tracker.get_status(process_id)
    record = flow_tracker.get_process(status.process_id) if status else None
    if record is None:
        raise NotFoundError(f"no process with id or job id {process_id!r}")
    if as_json:
        echo_json(record.to_dict())
    else:
        click.echo(render.process_tree(record, terminal_style()))


@main.command()
@database_option
@click.argument("process_or_job_id")
@friendly_errors
def status(database_url: str | None, process_or_job_id: str) -> None:
    """Print the status of a process or job (by process id or job id) as JSON."""
    use_database(database_url)
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
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask (needed where stdin is not a terminal)."
)
@friendly_errors
def cleanup(
    database_url: str | None,
    days: float | None,
    statuses: tuple[str, ...],
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete processes older than N days with their flows and logs (asks first)."""
    use_database(database_url)
    age = days if days is not None else flow_tracker.config.current().retention_days
    runtime.flush()
    store = runtime.store()
    count = queries.count_for_cleanup(store, age, statuses or None)
    what = f"process{'es' if count != 1 else ''} older than {age:g} days"
    if dry_run or count == 0:
        if not dry_run:  # nothing to confirm, but the clean-up runs (and is audited) all the same
            count = queries.cleanup(store, age, statuses or None)
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {count:,} {what}")
        return
    confirm_or_refuse(
        f"Delete {count:,} {what}, with their flows and logs, from {display_url(store.url)}?",
        yes=yes,
    )
    with progress_bar("deleting") as advance:
        deleted = queries.cleanup(
            store, age, statuses or None, progress=lambda done: advance(done, count)
        )
    click.echo(f"deleted {deleted:,} process{'es' if deleted != 1 else ''} older than {age:g} days")


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

    run_demo(database_url, fresh=not keep, echo=click.echo, style=terminal_style())
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
    basic_auth: list[tuple[str, str, str]] | None,
    allowed_hosts: tuple[str, ...] = (),
    proxy: tuple[str, ...] = (),
) -> None:
    try:
        import uvicorn

        from flow_tracker.web import create_app
    except ImportError as exc:
        raise click.ClickException(
            f"{exc}. The dashboard needs: pip install 'flow-tracker[web]'"
        ) from None
    from flow_tracker.web.security import LOOPBACK_HOSTS, serving_hosts

    use_database(database_url)
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
    # The client's address is what the audit log says an action came from: taken
    # from X-Forwarded-For only when sent by a proxy named with --proxy (uvicorn's
    # default would trust any local process, an SSH tunnel's user included).
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=bool(proxy),
        forwarded_allow_ips=",".join(proxy) or None,
    )


@main.command()
@database_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--read-only",
    is_flag=True,
    help="Hide and refuse every action (cleanup, reap, requeue, workflow starts, retries, "
    "resolves, cancels), whatever the user's role.",
)
@click.option(
    "--basic-auth",
    envvar="FLOW_TRACKER_BASIC_AUTH",
    default=None,
    metavar="USER:PASSWORD[:ROLE],...",
    help="Require HTTP basic auth: users separated by commas, each with a role "
    "(viewer, reader, operator, admin; admin when left out), e.g. "
    "'ops:pw1:operator,ana:pw2:viewer'. A password may hold ':'; the last field is "
    "the role only when it names one [env FLOW_TRACKER_BASIC_AUTH].",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Another host name the dashboard answers to (besides loopback and --host); "
    "'*.example.com' matches subdomains; repeatable.",
)
@click.option(
    "--proxy",
    "proxy",
    multiple=True,
    metavar="ADDRESS",
    help="The address of a reverse proxy in front of the dashboard: the client's address "
    "is then taken from its X-Forwarded-For (by default, from the connection); repeatable.",
)
@click.option(
    "--import",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first (the module of your app that calls the queue's install()), "
    "so the dashboard's retries, resolves and requeues are sent from here; repeatable.",
)
@friendly_errors
def serve(
    database_url: str | None,
    host: str,
    port: int,
    read_only: bool,
    basic_auth: str | None,
    allowed_hosts: tuple[str, ...],
    proxy: tuple[str, ...],
    modules: tuple[str, ...],
) -> None:
    """Serve the web dashboard (overview, processes, detail, cleanup, JSON API)."""
    # Without an integration here, the dashboard's actions wait for a worker of the
    # queue; with it (imported here), they are published at once.
    import_modules(modules)
    credentials = None
    if basic_auth is not None:
        try:
            from flow_tracker.web.security import basic_users, parse_basic_auth
        except ImportError as exc:
            raise click.ClickException(
                f"{exc}. The dashboard needs: pip install 'flow-tracker[web]'"
            ) from None
        try:
            credentials = parse_basic_auth(basic_auth)
            basic_users(credentials)  # a user named twice, a ':' in a name
        except ValueError as exc:  # UsageError; the message never repeats a password
            raise click.BadParameter(str(exc), param_hint="--basic-auth") from None
    _serve(
        database_url,
        host,
        port,
        read_only=read_only,
        basic_auth=credentials,
        allowed_hosts=allowed_hosts,
        proxy=proxy,
    )


if __name__ == "__main__":  # pragma: no cover
    main()


# -- recovery and locks -------------------------------------------------------


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
    help="Seconds without heartbeat, at least 3 x heartbeat_interval "
    "[default: the lost_after setting].",
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
    use_database(database_url)
    if lost_after is not None:
        try:
            config.check_lost_after(lost_after, config.current().heartbeat_interval)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--lost-after") from None
    import_modules(modules)
    while True:
        # A reap on a schedule that finds nothing is not worth an audit row each time.
        with audit.scheduled() if every is not None else contextlib.nullcontext():
            result = flow_tracker.reap(lost_after=lost_after)
        stamp = result.checked_at.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp}  lost: {len(result.lost)}  stale queued: {result.stale_queued}"
        if result.workflow_steps:
            line += f"  workflow steps sent again: {result.workflow_steps_sent}"
        if result.workflow_steps_waiting:
            line += (
                f"  {result.workflow_steps_waiting} "
                f"{waiting_for(*result.waiting_for)} (not sent from here)"
            )
        click.echo(line)
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
    use_database(database_url)
    import_modules(modules)
    ids: list[Any] = list(process_ids)
    for raw in ids:  # all checked before the first is sent
        try:
            uuid.UUID(str(raw))
        except ValueError:
            raise click.BadParameter(f"{raw!r} is not a process id") from None
    if which:
        ids = flow_tracker.recovery.requeue_candidates(Status(which))
    results = []
    # One at a time, so a terminal shows how far it got; lines are printed after the bar.
    with progress_bar("requeueing") as advance:
        for done, process_id in enumerate(ids, start=1):
            results += flow_tracker.requeue([process_id])
            advance(done, len(ids))
    failed = 0
    for result in results:
        click.echo(f"{result.process_id}  {result.message}")
        failed += not result.ok
    click.echo(f"{len(results) - failed} of {len(results)} sent")
    if any(r.outcome == "waiting" for r in results):
        click.echo(
            "hint: a live worker of that queue sends what waits within a second or so "
            "(the job stays lost until then); pass --import MODULE, the module of your app "
            "that calls the queue's install() (e.g. --import myapp.celery_app), to send from here",
            err=True,
        )
    if failed:
        sys.exit(1)


NAMED_IN_HEALTH = 20  # jobs named per kind; the counts say how many there are in all


@main.command()
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@friendly_errors
def health(database_url: str | None, as_json: bool) -> None:
    """Lost, silent and stale jobs; exit code 0 when healthy, 1 otherwise."""
    use_database(database_url)
    report = flow_tracker.health()
    named = flow_tracker.recovery.forgotten_jobs(limit=NAMED_IN_HEALTH)
    if as_json:
        echo_json({**report.to_dict(), "jobs": named.to_dict()})
    else:
        oldest = report.oldest_queued_age_s
        last = report.last_reap.strftime("%Y-%m-%d %H:%M:%S") if report.last_reap else "never"
        click.echo(f"{'healthy' if report.healthy else 'UNHEALTHY'}")
        click.echo(f"  running:       {report.running} ({report.silent} without heartbeat)")
        click.echo(f"  lost (24 h):   {report.lost} not requeued")
        click.echo(f"  stale queued:  {report.stale_queued}")
        click.echo(f"  oldest queued: {'-' if oldest is None else f'{oldest:.0f} s'}")
        click.echo(f"  last reap:     {last}")
        pending = report.pending_deliveries
        if pending:
            per_queue = ", ".join(f"{system} {count}" for system, count in sorted(pending.items()))
            age = report.oldest_pending_delivery_age_s or 0.0
            click.echo(
                f"  unsent:        {sum(pending.values())} waiting for a worker ({per_queue}); "
                f"oldest {age:.0f} s"
            )
        else:
            click.echo("  unsent:        0 (nothing waits for a worker)")
        for title, jobs, total in (
            ("without heartbeat", named.silent, report.silent),
            ("lost, not requeued", named.lost, report.lost),
            ("stale queued", named.stale_queued, report.stale_queued),
        ):
            if jobs:
                click.echo(f"\n{title}:")
                for job in jobs:
                    click.echo("  " + render.job_line(job))
                if total > len(jobs):
                    click.echo(f"  ... and {total - len(jobs)} more")
    sys.exit(0 if report.healthy else 1)


@main.command("events")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def events_command(as_json: bool) -> None:
    """The events flow_tracker.on() and subscribers get, with their payloads."""
    from flow_tracker.subscribers import describe_catalog

    catalog = list(describe_catalog())
    if as_json:
        echo_json(catalog)
        return
    for row in catalog:
        click.echo(f"{row['name']:<19} {row['description']}")
        click.echo(f"{'':<19} payload: {row['payload']}")


@main.command("locks")
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@friendly_errors
def locks_command(database_url: str | None, as_json: bool) -> None:
    """Locks of flow_tracker.exclusive held now."""
    use_database(database_url)
    from flow_tracker.locks import held_locks

    held = held_locks()
    if as_json:
        echo_json(
            [
                {
                    "name": lock.name,
                    "key": lock.key,
                    "holder": lock.holder,
                    "process_id": None if lock.process_id is None else str(lock.process_id),
                    "fence": lock.fence,
                    "acquired_at": lock.acquired_at.isoformat(),
                    "expires_at": lock.expires_at.isoformat(),
                }
                for lock in held
            ]
        )
        return
    for lock in held:
        click.echo(
            f"{lock.name}  {lock.key}  held by {lock.holder}  fence {lock.fence}  "
            f"since {lock.acquired_at:%H:%M:%S}  until {lock.expires_at:%H:%M:%S}"
        )
    if not held:
        click.echo("no locks held")
