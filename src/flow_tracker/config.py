"""Settings: defaults, ``FLOW_TRACKER_*`` environment variables and :func:`configure`.

Settings are read from the environment the first time they are needed, so a
process that never calls :func:`configure` still works (SQLite file in the
working directory). :func:`configure` replaces them at once and validates every
value, raising :class:`~flow_tracker.errors.ConfigurationError` on misuse.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

from flow_tracker.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///flow_tracker.db"
ENV_PREFIX = "FLOW_TRACKER_"
CATEGORY_PATTERN = re.compile(r"^[a-z0-9_-]{1,32}$")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of flow-tracker, with its default.

    Args:
        database_url: SQLAlchemy URL of the tracking database.
        enabled: False turns every call into a cheap no-op; the user's code still runs.
        retention_days: default age for :func:`flow_tracker.cleanup`.
        audit_retention_days: audit rows older than this are deleted by the reaper
            (hourly at most); a clean-up of processes never deletes them.
        default_category: category of processes that do not name one.
        log_to_stdlib: mirror tracker logs to ``logging.getLogger("flow_tracker")``.
        heartbeat_interval: seconds between heartbeats of running processes.
        lost_after: a running process whose heartbeat is older than this is lost; at
            least 3 x ``heartbeat_interval`` (see :func:`check_lost_after`).
        stale_after: a job still queued after this many seconds is reported as stale.
        max_lost: a job lost this many times is not re-enqueued again (poison pill).
        durable_start: a queued job's running row is stored before its code runs, so
            a worker killed at once leaves a row the reaper finds (one commit per job).
            False buffers it: cheaper, but a job killed in its first moments stays
            "queued" (reported as stale) instead of becoming lost.
        buffer_size: events held in memory at most before the least valuable are dropped.
        batch_size: events the background writer stores in one transaction at most.
        flush_interval: seconds the writer waits for more events before storing them.
        completion_timeout: seconds a finishing process waits for its final state to be
            stored (0 = do not wait). Never waited for while the database is unreachable.
        progress_interval: progress updates closer together than this are coalesced.
        max_message_length: longer log messages are truncated with a marker.
        max_data_size: JSON data larger than this many characters is replaced by a preview.
        redact_keys: extra key fragments to redact, besides the built-in sensitive ones.
        auto_migrate: create or upgrade the tables on first use.
        pg_synchronous_commit: False (default) lets flow-tracker's own PostgreSQL
            commits return before the WAL reaches disk (``synchronous_commit=off``
            on its connections only): committed rows survive any crash of the app
            or worker; a crash of the database server itself may lose the last
            fraction of a second of tracking data. True waits for the disk.
        partition_hours: on PostgreSQL, the span of time one partition of the log-entry
            and flow tables holds (a day by default; an hour or a few for a fleet that
            writes hundreds of millions of rows a day). Retention drops whole partitions.
        max_context_bytes: a workflow run's context larger than this (as UTF-8 JSON) is
            refused when the run is started: a context is read by every step and every
            page of the run, so pass ids, not data.
        max_result_bytes: a step's result larger than this fails the step (its
            children read it from the database, as the run's page does).
        context_warning_bytes: a context larger than this is accepted with a warning.
    """

    database_url: str = DEFAULT_DATABASE_URL
    enabled: bool = True
    retention_days: int = 365
    audit_retention_days: int = 365
    default_category: str = "jobs"
    log_to_stdlib: bool = True
    heartbeat_interval: float = 10.0
    lost_after: float = 60.0
    stale_after: float = 900.0
    max_lost: int = 3
    durable_start: bool = True
    buffer_size: int = 100_000
    batch_size: int = 5_000
    flush_interval: float = 0.2
    completion_timeout: float = 5.0
    progress_interval: float = 0.5
    max_message_length: int = 16_384
    max_data_size: int = 65_536
    redact_keys: tuple[str, ...] = ()
    auto_migrate: bool = True
    pg_synchronous_commit: bool = False
    partition_hours: int = 24
    max_context_bytes: int = 1_048_576
    max_result_bytes: int = 1_048_576
    context_warning_bytes: int = 65_536

    def __post_init__(self) -> None:
        _validate(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_lock = threading.Lock()
_current: Settings | None = None


def _parse_env_value(name: str, raw: str) -> object:
    kind = _FIELDS[name].type
    text = raw.strip()
    if kind == "bool":
        lowered = text.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean")
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigurationError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a {kind}") from None
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the defaults and ``FLOW_TRACKER_*`` environment variables."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _parse_env_value(name, raw)
    return Settings(**values)


def _validate(s: Settings) -> None:
    if not isinstance(s.database_url, str) or not s.database_url.strip():
        raise ConfigurationError("database_url must be a non-empty SQLAlchemy URL")
    if not CATEGORY_PATTERN.match(str(s.default_category)):
        raise ConfigurationError(
            f"default_category {s.default_category!r} must be a short word of [a-z0-9_-]"
        )
    positive = {
        "retention_days": s.retention_days,
        "audit_retention_days": s.audit_retention_days,
        "heartbeat_interval": s.heartbeat_interval,
        "lost_after": s.lost_after,
        "stale_after": s.stale_after,
        "max_lost": s.max_lost,
        "buffer_size": s.buffer_size,
        "batch_size": s.batch_size,
        "flush_interval": s.flush_interval,
        "max_message_length": s.max_message_length,
        "max_data_size": s.max_data_size,
        "partition_hours": s.partition_hours,
        "max_context_bytes": s.max_context_bytes,
        "max_result_bytes": s.max_result_bytes,
        "context_warning_bytes": s.context_warning_bytes,
    }
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    check_lost_after(s.lost_after, s.heartbeat_interval, ConfigurationError)
    for name in ("completion_timeout", "progress_interval"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigurationError(f"{name} must be zero or a positive number, got {value!r}")
    for name in (
        "enabled",
        "log_to_stdlib",
        "auto_migrate",
        "pg_synchronous_commit",
        "durable_start",
    ):
        if not isinstance(getattr(s, name), bool):
            raise ConfigurationError(f"{name} must be True or False")
    if not isinstance(s.partition_hours, int) or not 1 <= s.partition_hours <= 24 * 31:
        raise ConfigurationError(
            f"partition_hours must be a whole number of hours from 1 to 744, "
            f"got {s.partition_hours!r}"
        )
    if not all(isinstance(k, str) and k for k in s.redact_keys):
        raise ConfigurationError("redact_keys must be non-empty strings")


# A live job may miss a beat or two (a busy database, a paused process) without being
# called lost: a shorter lost_after marks running jobs lost, and a requeue runs them twice.
LOST_AFTER_BEATS = 3


def lost_after_floor(heartbeat_interval: float) -> float:
    """The shortest ``lost_after`` allowed with ``heartbeat_interval``: three heartbeats."""
    return LOST_AFTER_BEATS * float(heartbeat_interval)


def check_lost_after(
    lost_after: float,
    heartbeat_interval: float,
    error: type[ValueError] = ConfigurationError,
) -> None:
    """Refuse a ``lost_after`` that a live job's heartbeats could not keep up with.

    Raises:
        error: ``lost_after`` is below :func:`lost_after_floor` (a ``ValueError``:
            :class:`ConfigurationError` for settings, ``UsageError`` for a reap).
    """
    floor = lost_after_floor(heartbeat_interval)
    if lost_after < floor:
        raise error(
            f"lost_after={lost_after:g} s is too short for heartbeat_interval="
            f"{heartbeat_interval:g} s: a live job would be marked lost (and run twice if "
            f"requeued); use at least {floor:g} s ({LOST_AFTER_BEATS} heartbeats)"
        )


def current() -> Settings:
    """Return the settings in force, reading the environment on first use."""
    global _current
    settings = _current
    if settings is None:
        with _lock:
            if _current is None:
                _current = settings_from_env()
            settings = _current
    return settings


def in_force() -> Settings | None:
    """The settings in force if something read or configured them; None before (or after reset)."""
    return _current


def replace(settings: Settings | None) -> None:
    """Install ``settings`` as the settings in force (used by :func:`configure`)."""
    global _current
    with _lock:
        _current = settings


def build(**options: Any) -> Settings:
    """Return the environment's settings with ``options`` applied, validating every name."""
    unknown = sorted(set(options) - set(_FIELDS))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    if "redact_keys" in options and options["redact_keys"] is not None:
        options["redact_keys"] = tuple(options["redact_keys"])
    if "default_category" in options:
        options["default_category"] = _category_name(options["default_category"])
    base = settings_from_env()
    return dataclasses.replace(base, **options)


def _category_name(value: object) -> str:
    # Enums (and the Ruby habit of symbols) are accepted: their value is the name.
    raw = getattr(value, "value", value)
    return str(raw)


def validate_category(value: object) -> str:
    """Return ``value`` as a category name or raise :class:`ConfigurationError`."""
    name = _category_name(value)
    if not CATEGORY_PATTERN.match(name):
        raise ConfigurationError(f"category {name!r} must be a short word of [a-z0-9_-]")
    return name


def reset() -> None:
    """Forget configured settings; the next use reads the environment again."""
    replace(None)
