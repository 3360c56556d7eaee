"""Build the dashboard benchmark's data set in PostgreSQL: 1 M processes, 5 M flows, 5 M logs.

Generated inside the server (``INSERT … SELECT`` over ``generate_series``) in
the shapes the recorder writes: UUIDv7 ids from each row's time, 30 process
names with their own typical durations, nested flows, logs at every level, ~5 %
failures with tracebacks, metadata with tenants and users, a few hundred runs
still going in the last hour. Indexes are dropped while loading and rebuilt
after, as a restore would. The set is kept between runs (checked by a marker)
because building it takes minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from flow_tracker.store import schema
from flow_tracker.store.engine import Store

MARKER_KEY = "bench.dataset"
TABLES = ("flow_tracker_processes", "flow_tracker_flows", "flow_tracker_log_entries")

PROCESS_NAMES = [
    "SendWelcomeEmail", "PaymentWebhook", "ResizeImage", "SyncCrmContacts", "nightly_import",
    "MonthlyReport", "GenerateInvoice", "ChargeSubscription", "RefundOrder", "IndexSearch",
    "ExportCsv", "ImportProducts", "SendPushNotification", "RecalculateScores", "PurgeCache",
    "BackupDatabase", "TranscodeVideo", "ScanUpload", "SyncInventory", "SendDigest",
    "ReconcileLedger", "ProvisionAccount", "RotateKeys", "FetchExchangeRates", "BuildSitemap",
    "WarmCaches", "AggregateMetrics", "NotifySlack", "ArchiveOrders", "ValidateAddresses",
]  # fmt: skip
FLOW_NAMES = [
    "load_user", "render_template", "send_email", "verify_signature", "apply_charge",
    "notify_ledger", "download", "resize", "upload", "fetch_page", "upsert_rows",
    "update_cursor", "parse_rows", "validate", "store", "query_sales", "build_pdf",
    "call_gateway", "write_audit_log", "publish_event", "lock_account", "compute_totals",
    "serialize", "compress", "encrypt", "lookup_customer", "check_fraud", "reserve_stock",
    "release_stock", "commit",
]  # fmt: skip


def _sql_array(values: list[str]) -> str:
    return "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _uuid7(ts: str, seed: str) -> str:
    # 48-bit millisecond timestamp, version 7, variant, then 74 bits from md5(seed).
    return (
        f"(lpad(to_hex((extract(epoch from {ts}) * 1000)::bigint), 12, '0') || '7' || "
        f"substr(md5({seed}), 1, 3) || '8' || substr(md5({seed}), 4, 15))::uuid"
    )


def _processes_sql(count: int) -> str:
    names = _sql_array(PROCESS_NAMES)
    return f"""
    INSERT INTO flow_tracker_processes (
        id, name, category, status, metadata, error_class, error_message, error_traceback,
        created_at, queued_at, started_at, finished_at, updated_at, duration_ms,
        progress_current, progress_total, job_system, job_id, queue, attempt,
        host, pid, heartbeat_at, dropped_logs, lost_count)
    SELECT
        {_uuid7("created", "'p' || i")},
        ({names})[1 + n], (ARRAY['jobs','webhooks','reports','services'])[1 + n % 4],
        status,
        jsonb_build_object('tenant', 'tenant-' || (i % 50), 'user_id', i % 100000,
                           'region', (ARRAY['eu','us','ap'])[1 + i % 3]),
        CASE WHEN status = 'failed' THEN (ARRAY['TimeoutError','ValueError','HTTPError'])[1 + i % 3] END,
        CASE WHEN status = 'failed' THEN 'upstream answered 503 for order #' || i END,
        CASE WHEN status = 'failed' THEN 'Traceback (most recent call last):\n  File "app/jobs.py", line 42, in perform\nTimeoutError: upstream answered 503' END,
        created, created, created + interval '15 milliseconds',
        CASE WHEN status IN ('running','queued') THEN NULL ELSE created + interval '15 milliseconds' + dur * interval '1 millisecond' END,
        created + interval '15 milliseconds' + dur * interval '1 millisecond',
        CASE WHEN status IN ('running','queued') THEN NULL ELSE dur END,
        CASE WHEN status = 'running' THEN 40 ELSE 0 END,
        CASE WHEN status = 'running' THEN 100 ELSE 0 END,
        'celery', md5('job' || i)::uuid::text, (ARRAY['default','mail','billing'])[1 + i % 3],
        CASE WHEN r < 0.03 THEN 2 ELSE 1 END,
        'worker-' || (i % 8), 1000 + i % 5000,
        CASE WHEN status = 'running' THEN now() - interval '3 seconds' END,
        0, 0
    FROM (
        SELECT i, n, r, created,
            -- typical duration grows with the name's index; spread is log-normal-ish
            (20 * exp(n / 5.0)) * exp((random() + random() + random() - 1.5) * 1.2) AS dur,
            CASE
                WHEN created > now() - interval '1 hour' AND r < 0.02 THEN 'running'
                WHEN created > now() - interval '1 hour' AND r < 0.03 THEN 'queued'
                WHEN r < 0.95 THEN 'completed'
                WHEN r < 0.99 THEN 'failed'
                WHEN r < 0.995 THEN 'lost'
                ELSE 'skipped'
            END AS status
        FROM (
            SELECT i, ((i::bigint * 7919) % 30)::int AS n, random() AS r,
                   now() - random() * interval '30 days' AS created
            FROM generate_series(1, {count}) i
        ) raw
    ) s
    ORDER BY created  -- rows arrive in time order, as the writer appends them
    """


def _flows_sql() -> str:
    flow_names = _sql_array(FLOW_NAMES)
    # Flow k of a process: 0 spans 60 % with children 1 and 2 inside it; 3 and 4 follow.
    return f"""
    INSERT INTO flow_tracker_flows (
        id, process_id, parent_id, name, status, metadata, error_class, error_message,
        started_at, finished_at, duration_ms, attempt, position, depth)
    SELECT
        {_uuid7("fstart", "p.id::text || k")},
        p.id,
        CASE WHEN k IN (1, 2) THEN {_uuid7("p.started_at", "p.id::text || 0")} END,
        ({flow_names})[1 + (abs(hashtext(p.name)) + k * 7) % {len(FLOW_NAMES)}],
        CASE WHEN p.status = 'failed' AND k = 4 THEN 'failed'
             WHEN p.finished_at IS NULL AND k = 4 THEN 'running' ELSE 'completed' END,
        CASE WHEN k = 0 THEN jsonb_build_object('batch', k) END,
        CASE WHEN p.status = 'failed' AND k = 4 THEN p.error_class END,
        CASE WHEN p.status = 'failed' AND k = 4 THEN p.error_message END,
        fstart,
        CASE WHEN p.finished_at IS NULL AND k = 4 THEN NULL ELSE fstart + fdur * interval '1 millisecond' END,
        CASE WHEN p.finished_at IS NULL AND k = 4 THEN NULL ELSE fdur END,
        1, k * 2, CASE WHEN k IN (1, 2) THEN 1 ELSE 0 END
    FROM flow_tracker_processes p
    CROSS JOIN generate_series(0, 4) k
    CROSS JOIN LATERAL (
        SELECT coalesce(p.duration_ms, 500) AS d
    ) dd
    CROSS JOIN LATERAL (
        SELECT p.started_at + (ARRAY[0, 0, 0.3, 0.6, 0.8])[k + 1] * dd.d * interval '1 millisecond' AS fstart,
               (ARRAY[0.6, 0.3, 0.3, 0.2, 0.2])[k + 1] * dd.d AS fdur
    ) f
    ORDER BY fstart
    """


def _logs_sql() -> str:
    return f"""
    INSERT INTO flow_tracker_log_entries (
        id, process_id, flow_id, level, message, data, created_at, position)
    SELECT
        {_uuid7("f.started_at", "f.id::text || 'log'")},
        f.process_id, f.id,
        CASE WHEN f.status = 'failed' THEN 'error'
             WHEN f.position = 6 THEN 'warning'
             WHEN f.position = 2 THEN 'debug' ELSE 'info' END,
        CASE WHEN f.status = 'failed' THEN f.name || ' failed: ' || coalesce(f.error_message, '')
             ELSE f.name || ' done for customer ' || (('x' || substr(f.id::text, 25, 6))::bit(24)::int % 100000)
                  || ' order #' || (('x' || substr(f.id::text, 31, 6))::bit(24)::int) END,
        CASE WHEN f.position = 0 THEN jsonb_build_object('rows', f.position + 10) END,
        f.started_at, f.position + 1
    FROM flow_tracker_flows f
    ORDER BY f.started_at
    """


def _drop_indexes(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = ANY(%s) "
        "AND indexname NOT LIKE '%%_pkey'",
        (list(TABLES),),
    ).fetchall()
    for (name,) in rows:
        conn.execute(f'DROP INDEX "{name}"')


def _create_indexes(pg_url: str) -> None:
    """Create every index of the schema that is missing (after loading, or after a crash)."""
    store = Store(pg_url)
    for table in schema.metadata.sorted_tables:
        if table.name in TABLES:
            for index in table.indexes:
                index.create(store.engine, checkfirst=True)
    with store.engine.begin() as conn:  # as migration 0002 does where pg_trgm exists
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        conn.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS ix_flow_tracker_processes_name_trgm "
            "ON flow_tracker_processes USING gin (name gin_trgm_ops)"
        )
    store.dispose()


def ensure_dataset(
    pg_url: str, processes: int, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Create (or reuse) the data set; return how long each part took to build (s)."""
    store = Store(pg_url)
    store.ensure_schema()
    store.dispose()
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    timings: dict[str, float] = {}
    marker = f"v2:{processes}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Reused only while fresh: the windows (1 h, 24 h) are relative to when it was built.
        row = conn.execute(
            "SELECT value FROM flow_tracker_state WHERE key = %s "
            "AND updated_at > now() - interval '3 hours'",
            (MARKER_KEY,),
        ).fetchone()
        if row and row[0] == marker:
            log(f"  reusing the data set in {dsn.rsplit('/', 1)[-1]} ({processes:,} processes)")
            _create_indexes(pg_url)
            return timings
        log(f"  building {processes:,} processes, {5 * processes:,} flows and logs (minutes)...")
        for table in TABLES:
            conn.execute(f"TRUNCATE {table}")
        conn.execute("TRUNCATE flow_tracker_rollup_counts, flow_tracker_rollup_durations")
        conn.execute("DELETE FROM flow_tracker_state")
        _drop_indexes(conn)
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET synchronous_commit = off")
        for label, sql in (
            ("processes", _processes_sql(processes)),
            ("flows", _flows_sql()),
            ("logs", _logs_sql()),
        ):
            started = time.perf_counter()
            conn.execute(sql)
            timings[label] = time.perf_counter() - started
            log(f"    {label}: {timings[label]:.0f} s")
        started = time.perf_counter()
        _create_indexes(pg_url)
        conn.execute("VACUUM ANALYZE")
        timings["indexes"] = time.perf_counter() - started
        log(f"    indexes + analyze: {timings['indexes']:.0f} s")
        conn.execute(
            "INSERT INTO flow_tracker_state (key, value, updated_at) VALUES (%s, %s, now())",
            (MARKER_KEY, marker),
        )
    return timings
