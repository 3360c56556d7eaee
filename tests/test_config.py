"""Settings: defaults, environment variables, validation, enabled=False."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import flow_tracker
from flow_tracker import config, runtime


def test_every_setting_reads_from_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "FLOW_TRACKER_DATABASE_URL": "sqlite:///from-env.db",
        "FLOW_TRACKER_ENABLED": "false",
        "FLOW_TRACKER_RETENTION_DAYS": "30",
        "FLOW_TRACKER_DEFAULT_CATEGORY": "services",
        "FLOW_TRACKER_LOG_TO_STDLIB": "0",
        "FLOW_TRACKER_HEARTBEAT_INTERVAL": "2.5",
        "FLOW_TRACKER_LOST_AFTER": "30",
        "FLOW_TRACKER_REDACT_KEYS": "pin, otp",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = config.current()
    assert settings.database_url == "sqlite:///from-env.db"
    assert settings.enabled is False
    assert settings.retention_days == 30
    assert settings.default_category == "services"
    assert settings.log_to_stdlib is False
    assert settings.heartbeat_interval == 2.5
    assert settings.lost_after == 30.0
    assert settings.redact_keys == ("pin", "otp")


def test_bad_environment_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOW_TRACKER_RETENTION_DAYS", "a year")
    with pytest.raises(flow_tracker.ConfigurationError, match="FLOW_TRACKER_RETENTION_DAYS"):
        config.current()


def test_defaults_match_the_design() -> None:
    settings = config.Settings()
    assert settings.database_url == "sqlite:///flow_tracker.db"
    assert (settings.enabled, settings.retention_days, settings.default_category) == (
        True,
        365,
        "jobs",
    )
    assert (settings.log_to_stdlib, settings.heartbeat_interval, settings.lost_after) == (
        True,
        10.0,
        60.0,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "blue"}, "unknown option"),
        ({"retention_days": 0}, "retention_days"),
        ({"default_category": "Big Jobs"}, "default_category"),
        ({"database_url": "mysql://root@localhost/app"}, "supports sqlite, postgresql"),
        ({"database_url": "not a url"}, "not a database URL"),
        ({"database_url": "postgresql+psycopg2://localhost/app"}, "psycopg 3"),
        ({"database_url": "sqlite:////no/such/folder/x.db"}, "does not exist"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_configure_rejects_misuse_with_a_clear_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(flow_tracker.ConfigurationError, match=message):
        flow_tracker.configure(**options)


def test_postgres_scheme_alias_uses_psycopg3() -> None:
    from flow_tracker.store.engine import parse_url

    assert parse_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert parse_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def test_configure_returns_settings_and_category_enums_are_accepted(tmp_path: Path) -> None:
    import enum

    class Category(enum.Enum):
        SERVICES = "services"

    settings = flow_tracker.configure(
        database_url=f"sqlite:///{tmp_path / 'x.db'}", default_category=Category.SERVICES
    )
    assert settings.default_category == "services"
    assert config.current() is settings


def test_disabled_tracking_runs_user_code_and_never_touches_the_database(tmp_path: Path) -> None:
    db_file = tmp_path / "never.db"
    flow_tracker.configure(database_url=f"sqlite:///{db_file}", enabled=False)

    @flow_tracker.track("disabled")
    def job(x: int) -> int:
        current = flow_tracker.current()
        assert current is not None
        current.progress.total = 10
        current.progress.increment()
        with flow_tracker.flow("step") as flow:
            flow.info("nothing stored", data={"x": x})
            flow_tracker.log("still nothing")
        return x * 3

    assert job(5) == 15
    with flow_tracker.track("block") as tracker:
        with tracker.flow("a") as a, a.flow("b") as b:
            b.warning("w")
        tracker.update_metadata(k=1)
    with pytest.raises(ZeroDivisionError):
        with flow_tracker.track("failing"):
            1 / 0  # noqa: B018
    manual = flow_tracker.start("manual")
    manual.complete()
    assert tracker.process_id == uuid.UUID(int=0)
    assert not db_file.exists()
    assert runtime._writer is None and runtime._store is None
    assert flow_tracker.current() is None


def test_disabled_tracking_still_rejects_unknown_levels() -> None:
    flow_tracker.configure(enabled=False)
    with flow_tracker.track("x") as tracker, pytest.raises(flow_tracker.UsageError):
        tracker.log("m", level="shout")


def test_importing_does_no_io_and_starts_no_thread(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import threading, flow_tracker, flow_tracker.cli\n"
        "from flow_tracker import runtime\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert runtime._writer is None and runtime._store is None\n"
        "print('clean')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr
    assert list(tmp_path.iterdir()) == []  # no database file was created
