"""The demo: records a realistic day of background work into a SQLite file and shows it.

Nested flows, logs at every level, failures with real tracebacks, a flow that
failed inside a process that recovered, progress, a child process linked to its
parent, one process still running (holding a critical section), a charge skipped
because its critical section was held, and a job whose worker died, found by the
reaper.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import flow_tracker
from flow_tracker import events as ev
from flow_tracker import runtime
from flow_tracker.cli import render
from flow_tracker.cli.demo_history import record_history
from flow_tracker.cli.demo_starting import record_started_runs
from flow_tracker.cli.demo_workflows import record_workflows
from flow_tracker.status import Status
from flow_tracker.store import queries, rollups
from flow_tracker.store.engine import display_url, parse_url

_rng = random.Random(7)  # the demo's own, so the host's random module is left alone
HISTORY_DAYS = 7  # the week of past runs, for the dashboard's charts


class SmtpError(Exception):
    """Stands for the error a mail client raises."""


class PaymentGatewayTimeout(Exception):
    """Stands for the timeout a payment provider's client raises."""


def _pause(low: float, high: float) -> None:
    time.sleep(_rng.uniform(low, high))


def nightly_import(rows: int = 1200) -> None:
    """A batch import with downloads, parsing with progress, validation and storing."""
    with flow_tracker.track(
        "nightly_import", category="jobs", metadata={"source": "s3://exports/2026-11-22"}
    ) as tracker:
        tracker.info("Import started", data={"rows_expected": rows})
        with tracker.flow("download_files") as download:
            for name in ("customers.csv", "orders.csv", "refunds.csv"):
                with download.flow(f"fetch {name}", metadata={"bytes": _rng.randint(10**5, 10**7)}):
                    _pause(0.01, 0.04)
                    flow_tracker.log(f"Downloaded {name}", level="debug")
        with tracker.flow("parse_rows", metadata={"rows": rows}) as parse:
            tracker.progress.total = rows
            for index in range(rows):
                if index % 400 == 0:
                    parse.debug("Parsing chunk", data={"offset": index})
                    _pause(0.02, 0.05)
                tracker.progress.increment()
            parse.info("Parsed all rows")
        with tracker.flow("validate") as validate:
            validate.warning(
                "Rows skipped: missing customer id", data={"skipped": 3, "lines": [118, 502, 977]}
            )
        with tracker.flow("store") as store:
            for batch in range(3):
                with store.flow("upsert batch", metadata={"batch": batch, "size": 400}):
                    _pause(0.01, 0.03)
            # A child process: linked to this one as its parent.
            with flow_tracker.track("generate_thumbnails", category="jobs") as child:
                with child.flow("resize"):
                    _pause(0.01, 0.03)
                child.info("Made 42 thumbnails")
        tracker.update_metadata(rows_imported=rows - 3)
        tracker.info("Import finished")


def _load_user(user_id: int) -> dict[str, Any]:
    with flow_tracker.flow("load_user"):
        _pause(0.002, 0.01)
        return {"id": user_id, "email": f"user{user_id}@example.com"}


def _deliver(email: str, fail: bool) -> None:
    if fail:
        raise SmtpError(f"451 4.3.0 Mail server temporarily rejected message to {email}")


def send_welcome_email(user_id: int, fail: bool = False) -> None:
    """The Ruby gem's MyJob, in Python: load_user, send_email, update_stats."""
    with flow_tracker.track("SendWelcomeEmail", metadata={"user_id": user_id}):
        user = _load_user(user_id)
        with flow_tracker.flow("send_email") as flow:
            flow.log(f"Sending email to {user['email']}")
            _pause(0.005, 0.02)
            _deliver(user["email"], fail)
        with flow_tracker.flow("update_stats"):
            _pause(0.001, 0.005)


def payment_webhook(payload: dict[str, Any]) -> None:
    """An API request that fails deep inside, with secrets in its metadata (redacted)."""
    with flow_tracker.track(
        "PaymentWebhook",
        category="api",
        metadata={"provider": "stripe", "api_key": "sk_live_123", "event": payload.get("type")},
    ) as tracker:
        tracker.info("Webhook received", data={"headers": {"Authorization": "Bearer abc"}})
        with tracker.flow("verify_signature"):
            _pause(0.001, 0.004)
        with tracker.flow("apply_event") as apply:
            with apply.flow("charge_customer"):
                apply.error("Gateway did not answer in 3 s", data={"attempt": 3})
                raise PaymentGatewayTimeout("POST /v1/charges timed out after 3.0s")


def monthly_report() -> None:
    """A service run where one flow fails, is retried, and the process completes."""
    with flow_tracker.track(
        "MonthlyReport", category="services", metadata={"month": "2026-10"}
    ) as t:
        for attempt in (1, 2):
            try:
                with t.flow("fetch_exchange_rates", metadata={"attempt": attempt}):
                    _pause(0.01, 0.02)
                    if attempt == 1:
                        raise ConnectionResetError("rates.example.com reset the connection")
                    t.info("Rates fetched on second attempt")
            except ConnectionResetError:
                t.warning("Retrying exchange rates")
        with t.flow("render_pdf", metadata={"pages": 14}):
            _pause(0.02, 0.05)
        t.critical("Revenue dropped 40% month on month", data={"previous": 120_400, "now": 72_100})


def charge_customer(user_id: int) -> None:
    """A job inside a critical section: one charge per user at a time."""
    with flow_tracker.track("ChargeCustomer", category="jobs", metadata={"user_id": user_id}) as t:
        with flow_tracker.exclusive("financial", key=f"user:{user_id}", on_conflict="skip"):
            with t.flow("charge_card"):
                _pause(0.005, 0.02)
            t.info("Charged 49.00 EUR")


def charge_while_another_charge_runs(user_id: int) -> None:
    """The second charge of a user finds the first one's lock held and is skipped."""
    with flow_tracker.exclusive("financial", key=f"user:{user_id}"):
        charge_customer(user_id)  # ends `skipped`, saying who holds the lock


def job_of_a_dead_worker() -> None:
    """A job whose worker was killed mid-run: its heartbeats stopped 2 minutes ago."""
    now = time.time()
    job_id = f"rq-{_rng.getrandbits(64):016x}"
    row = {
        "name": "ResizeUploads",
        "category": "jobs",
        "status": "running",
        "created_at": now - 150,
        "queued_at": now - 150,
        "started_at": now - 140,
        "updated_at": now - 120,
        "heartbeat_at": now - 120,
        "host": "worker-2",
        "pid": 4242,
        "job_system": "rq",
        "job_id": job_id,
        "queue": "media",
        "job_args": {"args": [8812], "kwargs": {}},
        "job_payload": {"func": "media.resize_uploads", "args": [8812], "kwargs": {}},
        "attempt": 1,
    }
    from flow_tracker.ids import process_id_for

    runtime.writer().write_now(((ev.PROCESS_START, process_id_for("rq", job_id).int, row),))


SYNC_LOCK = ("account-sync", "shard:3")


def long_running_sync() -> None:
    """A process left running, as one is while its worker is busy."""
    running = flow_tracker.start("LongRunningSync", category="services", metadata={"shard": 3})
    # Held until its lease runs out after the demo ends: the Health page lists it.
    flow_tracker.exclusive(SYNC_LOCK[0], key=SYNC_LOCK[1], ttl=900).__enter__()
    running.progress.total = 500
    running.progress.current = 210
    with running.flow("sync_accounts") as sync:
        sync.info("Synced 210 of 500 accounts")
    running.flow("sync_invoices").__enter__()  # still open: the process keeps running


def _free_an_earlier_demos_lock() -> bool:
    """Free the lock an earlier demo's LongRunningSync left held; True if there was one.

    A demo adds to a database it did not make (PostgreSQL, or ``--keep``), and the
    earlier run's LongRunningSync, whose interpreter has exited, still holds its
    lock for the rest of its lease: this run's would be refused. Only that lock,
    held by a process of that name, is freed.
    """
    from flow_tracker.locks import held_locks
    from flow_tracker.store import locks as stored_locks

    freed = False
    for lock in held_locks():
        if (lock.name, lock.key) != SYNC_LOCK or lock.process_id is None:
            continue
        holder = flow_tracker.get_process(lock.process_id)
        if holder is not None and holder.name == "LongRunningSync":
            store = runtime.store()
            freed |= stored_locks.release(store, lock.name, lock.key, lock.holder, lock.fence)
    return freed


def _count_processes() -> int:
    """How many processes the database holds (the list shows the newest 50 only)."""
    store = runtime.store()
    with store.engine.connect() as conn:
        return sum(queries.count_by_status(conn, Status).values())


def run_demo(
    database_url: str,
    *,
    fresh: bool = True,
    echo: Callable[[str], None] = print,
    style: render.Style = render.plain,
) -> list[Any]:
    """Record the demo processes into ``database_url`` and print what was recorded."""
    url = parse_url(database_url)
    path = url.database or ""
    own_file = url.get_backend_name() == "sqlite" and bool(path)
    if fresh and own_file:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    flow_tracker.configure(database_url=database_url, log_to_stdlib=False, progress_interval=0.05)
    _rng.seed(7)
    if not own_file:
        echo(
            f"Adding to what {display_url(url)} holds: the demo starts afresh only "
            "in a SQLite file of its own."
        )
    if _free_an_earlier_demos_lock():
        echo("Freed the lock an earlier demo's LongRunningSync still held.")
    echo("Recording demo processes...")
    nightly_import()
    for user_id, fail in ((101, False), (102, False), (103, True), (104, False)):
        with contextlib.suppress(SmtpError):
            send_welcome_email(user_id, fail)
    with contextlib.suppress(PaymentGatewayTimeout):
        payment_webhook({"type": "charge.succeeded"})
    monthly_report()
    charge_customer(104)
    charge_while_another_charge_runs(103)
    # In a context of its own, so the unfinished process does not stay current here.
    contextvars.Context().run(long_running_sync)
    job_of_a_dead_worker()
    flow_tracker.flush()
    reaped = flow_tracker.reap()
    echo(f"The reaper marked {len(reaped.lost)} job lost: its worker stopped sending heartbeats.")
    runs = record_workflows()
    echo(
        "Ran the process_order workflow 3 times: completed, failed at charge (confirm "
        "waits on it), and resolved by hand."
    )
    record_started_runs(echo)
    past = record_history(runtime.store(), days=HISTORY_DAYS)
    # Stored after the reaper rolled up the hours they finished in, as a restore
    # would be: the charts count them only once their days are rolled up again.
    store = runtime.store()
    now = queries.database_time(store)
    rollups.rebuild(store, now, since=now - timedelta(days=HISTORY_DAYS + 1))
    echo(f"Added {past:,} finished runs of the past week, for the dashboard's charts.")

    page = flow_tracker.list_processes(limit=50)
    total = _count_processes()
    shown = f"; the newest {len(page.items)}" if total > len(page.items) else ""
    echo(f"\n{total:,} processes recorded in {display_url(url)}{shown}:\n")
    for process in page:
        echo(render.process_row(process, style))
    main = next(p for p in page if p.name == "nightly_import")
    failed = next(p for p in page if p.name == "PaymentWebhook")
    for record in (flow_tracker.get_process(main.id), flow_tracker.get_process(failed.id)):
        if record is not None:
            echo("\n" + render.process_tree(record, style))
    command = command_name()
    echo(
        "\nLook around:\n"
        f"  {command} serve --database-url {database_url}\n"
        f"  {command} list --status failed --database-url {database_url}\n"
        f"  {command} show <id> --database-url {database_url}\n"
        f"  {command} health --database-url {database_url}\n"
        f"  {command} locks --database-url {database_url}\n"
        f"  {command} workflows show {runs[1].id} --database-url {database_url}"
    )
    return page.items


def command_name() -> str:
    """How to call ``flow-tracker`` from here: by name when the shell finds this one.

    ``make demo`` installs into ``.venv`` without activating it, so the hint says
    ``.venv/bin/flow-tracker`` there; after a ``pip install`` into an active
    environment it says ``flow-tracker``.
    """
    script = Path(sys.executable).with_name("flow-tracker")
    found = shutil.which("flow-tracker")
    if not script.exists() or (found is not None and Path(found).resolve() == script.resolve()):
        return "flow-tracker"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
