"""The tables, as SQLAlchemy Core metadata. Migrations in ``migrations/`` create them.

There are no foreign keys on purpose: every row is written by the background
writer in batches (COPY on PostgreSQL), and per-row key checks would halve that
throughput and rule out the time-partitioned log and flow tables planned for
large installations. The writer keeps the links right and :mod:`cleanup`
deletes children explicitly.

Every index serves a dashboard or API query:

* processes: latest first (``created_at``), filtered by status, category or
  name; job id look-ups; running processes by heartbeat (the reaper); parent
  links; the re-enqueued run of a lost job; metadata containment (GIN, PostgreSQL only);
  the last completed run of a name (a partial index: the baseline of ``compare``);
* flows and log entries: everything of one process in order (``process_id``,
  ``position``); flows by name over time (slowest-flow statistics);
* transitions: the state history of one process in order (``process_id``, ``at``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    text,
)

from flow_tracker.store.types import UTCDateTime, int_list_type, json_type

VERSION_TABLE = "flow_tracker_alembic_version"

metadata = MetaData()


def _error_columns() -> list[Column[object]]:
    return [
        Column("error_class", String(255)),
        Column("error_message", Text),
        Column("error_traceback", Text),
    ]


processes = Table(
    "flow_tracker_processes",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("category", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata", json_type()),
    *_error_columns(),
    Column("created_at", UTCDateTime, nullable=False),
    Column("queued_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("updated_at", UTCDateTime),
    Column("duration_ms", Float),
    Column("progress_current", Float, nullable=False, server_default=text("0")),
    Column("progress_total", Float, nullable=False, server_default=text("0")),
    # Queued jobs (integrations): what system, which job, where, and what it needs
    # to be enqueued again. job_args is redacted for display; job_payload is kept
    # intact for requeue and never shown.
    Column("job_system", String(32)),
    Column("job_id", String(255)),
    Column("queue", String(255)),
    Column("job_args", json_type()),
    Column("job_payload", json_type()),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("max_attempts", Integer),
    Column("parent_process_id", Uuid),
    Column("requeued_from_id", Uuid),
    Column("lost_count", Integer, nullable=False, server_default=text("0")),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("worker", String(255)),
    Column("heartbeat_at", UTCDateTime),
    Column("dropped_logs", Integer, nullable=False, server_default=text("0")),
    Index("ix_flow_tracker_processes_created", "created_at", "id"),
    Index("ix_flow_tracker_processes_status_created", "status", "created_at"),
    Index("ix_flow_tracker_processes_category_created", "category", "created_at"),
    Index("ix_flow_tracker_processes_name_created", "name", "created_at"),
    Index("ix_flow_tracker_processes_job_id", "job_id"),
    Index("ix_flow_tracker_processes_parent", "parent_process_id"),
    Index(
        "ix_flow_tracker_processes_requeued_from",
        "requeued_from_id",
        postgresql_where=text("requeued_from_id IS NOT NULL"),
        sqlite_where=text("requeued_from_id IS NOT NULL"),
    ),
    Index(
        "ix_flow_tracker_processes_heartbeat",
        "heartbeat_at",
        postgresql_where=text("status IN ('running', 'retrying')"),
        sqlite_where=text("status IN ('running', 'retrying')"),
    ),
    Index("ix_flow_tracker_processes_finished", "finished_at"),
    # flow_tracker.compare's baseline: the last completed run of a name before a moment,
    # found in one probe however many runs of that name failed since.
    Index(
        "ix_flow_tracker_processes_completed_name_started",
        "name",
        "started_at",
        "id",
        postgresql_where=text("status = 'completed'"),
        sqlite_where=text("status = 'completed'"),
    ),
    Index(
        "ix_flow_tracker_processes_metadata",
        "metadata",
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
    ).ddl_if(dialect="postgresql"),
)

flows = Table(
    "flow_tracker_flows",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("process_id", Uuid, nullable=False),
    Column("parent_id", Uuid),
    Column("name", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata", json_type()),
    *_error_columns(),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("duration_ms", Float),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("position", BigInteger, nullable=False),
    Column("depth", Integer, nullable=False, server_default=text("0")),
    Index("ix_flow_tracker_flows_process", "process_id", "position"),
    Index("ix_flow_tracker_flows_name_started", "name", "started_at"),
    # The dashboard's statistics roll up flows by the hour they finished in.
    Index("ix_flow_tracker_flows_finished", "finished_at"),
)

log_entries = Table(
    "flow_tracker_log_entries",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("process_id", Uuid, nullable=False),
    Column("flow_id", Uuid),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", json_type()),
    Column("created_at", UTCDateTime, nullable=False),
    Column("position", BigInteger, nullable=False),
    Index("ix_flow_tracker_log_entries_process", "process_id", "position"),
)

# Every status change of a process, in the order it happened (queued, running,
# retrying, running, completed; lost, requeued...), with the attempt and why.
transitions = Table(
    "flow_tracker_transitions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("process_id", Uuid, nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("attempt", Integer),
    Column("reason", Text),
    Index("ix_flow_tracker_transitions_process", "process_id", "at"),
)

# Critical sections (flow_tracker.exclusive): one row per (name, key) ever used, kept
# after release (holder '' and expired) so that the fence only grows.
# ``fence`` grows with every new holder so a stale holder's late release can be told apart.
locks = Table(
    "flow_tracker_locks",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("process_id", Uuid),
    Column("fence", BigInteger, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_flow_tracker_locks_expires", "expires_at"),
)

# Dashboard statistics (see store/rollups.py): finished processes and flows counted
# per hour and per day, so that a 30-day overview reads thousands of rows, not millions.
# grain is "h" or "d"; kind is "p" (process) or "f" (flow; category is "" for flows).
rollup_counts = Table(
    "flow_tracker_rollup_counts",
    metadata,
    Column("grain", String(1), primary_key=True),
    Column("bucket_start", UTCDateTime, primary_key=True),
    Column("kind", String(1), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("category", String(32), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("duration_ms_sum", Float, nullable=False),
    # Of count, how many took more than one attempt (a step's or a job's retries).
    Column("retried", BigInteger, nullable=False, server_default=text("0")),
)

# Histograms of durations for p50/p95: one row per name and hour (or day), its counts
# as a dense list from first_bucket on (log-scale buckets, see store/histogram.py).
rollup_durations = Table(
    "flow_tracker_rollup_durations",
    metadata,
    Column("grain", String(1), primary_key=True),
    Column("bucket_start", UTCDateTime, primary_key=True),
    Column("kind", String(1), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("first_bucket", SmallInteger, nullable=False),
    Column("counts", int_list_type(), nullable=False),
)

# Small named values shared by every flow-tracker process (rollup watermark, ...).
state = Table(
    "flow_tracker_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Workflows (flow_tracker.workflow): one row per run (its id is the run's
# process id) with the DAG as it was when the run started, so that pages and the CLI
# draw it without importing user code; one row per step of a run. A step's attempts are
# counted on its row, and ``waiting`` counts the parents that have not ended yet: the
# transaction that stores a parent's end decrements it, and the one that brings it to
# zero queues the step, so a step with many parents is queued exactly once.
workflow_runs = Table(
    "flow_tracker_workflow_runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(255), nullable=False),
    Column("queue", String(32), nullable=False),
    # The module that declares the workflow: a worker that does not know the workflow
    # yet imports it (an RQ worker imports only the step function's own module).
    Column("module", String(255)),
    Column("status", String(16), nullable=False),
    Column("dag", json_type(), nullable=False),
    Column("context", json_type()),
    Column("failed_step", String(255)),
    # Steps queued, running or waiting to retry, and steps failed for good: the run
    # ends when no step is active, without counting its step rows each time.
    Column("active", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    # What it was started as and with: its definition's namespace and
    # version, its tags (also one row each in workflow_run_tags, for the filter) and
    # the idempotency key that makes a repeated start return this run.
    Column("namespace", String(120), nullable=False, server_default="default"),
    Column("version", String(64), nullable=False, server_default="1"),
    Column("idempotency_key", String(255)),
    Column("tags", json_type()),
    Index("ix_flow_tracker_workflow_runs_created", "created_at", "id"),
    Index("ix_flow_tracker_workflow_runs_name_created", "name", "created_at"),
    Index("ix_flow_tracker_workflow_runs_status_created", "status", "created_at"),
    # The database decides a repeated start: the second insert of a key fails.
    Index(
        "ux_flow_tracker_workflow_runs_idempotency",
        "namespace",
        "name",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
        sqlite_where=text("idempotency_key IS NOT NULL"),
    ),
)

# Workflow definitions: every (namespace, name, version) any process declared,
# with its DAG snapshot, so that pages, the API and the CLI list and start workflows
# without importing user code. Written once per version by each declaring process.
workflow_definitions = Table(
    "flow_tracker_workflow_definitions",
    metadata,
    Column("namespace", String(120), primary_key=True),
    Column("name", String(120), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("description", Text),
    Column("dag", json_type(), nullable=False),
    Column("queue", String(32), nullable=False),
    Column("queue_name", String(255), nullable=False),
    Column("module", String(255)),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
)

# A run's tags, one row each: the list filtered by a tag walks (key, value, created_at)
# in index order and stops at a page, however many runs carry the tag.
workflow_run_tags = Table(
    "flow_tracker_workflow_run_tags",
    metadata,
    Column("run_id", Uuid, primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_flow_tracker_workflow_run_tags_lookup", "key", "value", "created_at", "run_id"),
)

workflow_steps = Table(
    "flow_tracker_workflow_steps",
    metadata,
    Column("run_id", Uuid, primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("waiting", Integer, nullable=False),
    Column("parents", json_type(), nullable=False),
    Column("children", json_type(), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("process_id", Uuid),
    Column("job_id", String(255)),
    Column("result", json_type()),
    Column("error_class", String(255)),
    Column("error_message", Text),
    Column("queue_name", String(255), nullable=False),
    Column("next_attempt_at", UTCDateTime),
    Column("queued_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_flow_tracker_workflow_steps_process", "process_id"),
)

# Delivery: requests to publish, written in the transaction of the state
# change they announce where the queue's integration is not installed (or its broker
# refused them); a live worker of that queue publishes each and marks it sent, with
# who did and when. ``kind`` is "step" (a workflow step to send) or "requeue" (a lost
# or failed job to enqueue again); ``target_id`` is the step's or the old job's process.
outbox = Table(
    "flow_tracker_outbox",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("job_system", String(32), nullable=False),
    # A step's workflow: the in-process pool delivers only steps of workflows it declares.
    Column("workflow", String(255)),
    Column("target_id", Uuid, nullable=False),
    Column("payload", json_type(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_try_at", UTCDateTime, nullable=False),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("sent_by", String(255)),
    Index(
        "ix_flow_tracker_outbox_pending",
        "job_system",
        "next_try_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index("ix_flow_tracker_outbox_target", "target_id"),
)

# Who did what: one row per action from the dashboard, the API, the CLI
# or the library — allowed, refused or failed — never a payload value. ``at`` is the
# database's time. Refusals of one actor, action and minute are one row whose
# ``times`` counts them, so a script hammering a forbidden route writes little.
audit_log = Table(
    "flow_tracker_audit",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("via", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255)),
    Column("outcome", String(16), nullable=False),
    Column("detail", json_type()),
    Column("client", String(255)),
    Column("request_id", String(64)),
    Column("times", Integer, nullable=False, server_default=text("1")),
    Index("ix_flow_tracker_audit_at", "at"),
    Index("ix_flow_tracker_audit_actor", "actor", "at"),
    Index("ix_flow_tracker_audit_action", "action", "at"),
)

# API tokens: sent as ``ft_<id>_<secret>``; only the SHA-256 of the
# secret is kept. A name is unique among tokens not revoked, so a revoked name
# may be used again and its old token stays refused.
api_tokens = Table(
    "flow_tracker_api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(120), nullable=False),
    Column("role", String(32), nullable=False),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(255)),
    Column("expires_at", UTCDateTime),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    Column("revoked_by", String(255)),
    Index(
        "ux_flow_tracker_api_tokens_name",
        "name",
        unique=True,
        postgresql_where=text("revoked_at IS NULL"),
        sqlite_where=text("revoked_at IS NULL"),
    ),
)
