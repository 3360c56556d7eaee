"""A week of past runs for the demo, so the dashboard's charts have a history to show.

Written straight into the tables (as a restore from backup would), with the
same shapes the recorder writes: processes with nested flows and logs, a few
per cent failures with tracebacks, durations that vary by job.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from flow_tracker.store.bulk import insert_rows
from flow_tracker.store.engine import Store

# name, category, typical duration (ms), failure rate, flow names, error
JOBS: list[tuple[str, str, float, float, list[str], tuple[str, str]]] = [
    (
        "SendWelcomeEmail",
        "jobs",
        180.0,
        0.04,
        ["load_user", "render_template", "send_email"],
        ("SmtpError", "451 4.7.1 greylisted, try again later"),
    ),
    (
        "PaymentWebhook",
        "webhooks",
        95.0,
        0.06,
        ["verify_signature", "apply_charge", "notify_ledger"],
        ("PaymentGatewayTimeout", "gateway did not answer within 10 s"),
    ),
    (
        "ResizeImage",
        "jobs",
        640.0,
        0.02,
        ["download", "resize", "upload"],
        ("OSError", "cannot identify image file"),
    ),
    (
        "SyncCrmContacts",
        "services",
        2_400.0,
        0.05,
        ["fetch_page", "upsert_contacts", "update_cursor"],
        ("HTTPError", "429 Too Many Requests"),
    ),
    (
        "nightly_import",
        "jobs",
        41_000.0,
        0.08,
        ["download_files", "parse_rows", "validate", "store"],
        ("IntegrityError", "duplicate key value violates unique constraint"),
    ),
    (
        "MonthlyReport",
        "reports",
        7_800.0,
        0.03,
        ["query_sales", "build_pdf", "email_pdf"],
        ("TimeoutError", "report query exceeded 60 s"),
    ),
]
WEIGHTS = [40, 25, 15, 10, 1, 2]
TRACEBACK = """Traceback (most recent call last):
  File "app/jobs.py", line 42, in perform
    result = step(payload)
  File "app/clients.py", line 118, in call
    raise {cls}({msg!r})
{cls}: {msg}
"""


def _uuid7(moment: datetime, rng: random.Random) -> uuid.UUID:
    ms = int(moment.timestamp() * 1000)
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62) | rng.getrandbits(62))


def record_history(store: Store, *, days: int = 7, count: int = 1_600, seed: int = 11) -> int:
    """Insert ``count`` finished processes spread over the last ``days`` days.

    Busier in working hours, like real traffic. Returns how many were written.
    """
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    proc_rows: list[dict[str, Any]] = []
    flow_rows: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    written = 0
    while written < count:
        offset = rng.uniform(600, days * 86_400)
        created = now - timedelta(seconds=offset)
        if not 6 <= created.hour <= 21 and rng.random() < 0.6:
            continue  # quieter at night
        name, category, typical, fail_rate, steps, (err_cls, err_msg) = rng.choices(JOBS, WEIGHTS)[
            0
        ]
        failed = rng.random() < fail_rate
        duration = typical * rng.lognormvariate(0, 0.45)
        pid = _uuid7(created, rng)
        started = created + timedelta(milliseconds=rng.uniform(2, 120))
        clock = started
        position = 0
        failed_at = rng.randrange(len(steps)) if failed else len(steps)
        for index, step in enumerate(steps[: failed_at + 1]):
            share = duration / len(steps) * rng.uniform(0.4, 1.6)
            flow_start = clock
            clock = clock + timedelta(milliseconds=share)
            step_failed = index == failed_at
            fid = _uuid7(flow_start, rng)
            flow_rows.append(
                {
                    "id": fid,
                    "process_id": pid,
                    "parent_id": None,
                    "name": step,
                    "status": "failed" if step_failed else "completed",
                    "metadata": None,
                    "error_class": err_cls if step_failed else None,
                    "error_message": err_msg if step_failed else None,
                    "started_at": flow_start,
                    "finished_at": clock,
                    "duration_ms": share,
                    "attempt": 1,
                    "position": position,
                    "depth": 0,
                }
            )
            log_rows.append(
                {
                    "id": _uuid7(flow_start, rng),
                    "process_id": pid,
                    "flow_id": fid,
                    "level": "error" if step_failed else "info",
                    "message": f"{step} failed: {err_msg}" if step_failed else f"{step} done",
                    "data": None,
                    "created_at": clock,
                    "position": position + 1,
                }
            )
            position += 2
        finished = clock
        proc_rows.append(
            {
                "id": pid,
                "name": name,
                "category": category,
                "status": "failed" if failed else "completed",
                "metadata": {"tenant": rng.choice(["acme", "globex", "initech"])},
                "error_class": err_cls if failed else None,
                "error_message": err_msg if failed else None,
                "error_traceback": TRACEBACK.format(cls=err_cls, msg=err_msg) if failed else None,
                "created_at": created,
                "queued_at": created,
                "started_at": started,
                "finished_at": finished,
                "updated_at": finished,
                "duration_ms": (finished - started).total_seconds() * 1000,
                "attempt": 1,
                "host": "worker-" + str(rng.randint(1, 3)),
                "pid": rng.randint(2000, 9000),
            }
        )
        written += 1
    insert_rows(store, proc_rows, flow_rows, log_rows)
    return written
