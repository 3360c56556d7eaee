"""Run the Alembic migrations shipped inside the package.

The version is kept in ``flow_tracker_alembic_version`` so that it never mixes
with the host application's own Alembic history. Concurrent first uses are
serialised: an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from flow_tracker.store.schema import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config

    from flow_tracker.store.engine import Store

# Alembic is imported only when it is needed (an upgrade, the CLI): every
# forked work-horse checks the schema, and importing Alembic costs ~50 ms.

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The newest revision in migrations/versions (a test checks they agree). Knowing
# it without Alembic makes the first-use check one small query: it runs in every
# forked work-horse of an RQ worker, where loading the scripts cost ~100 ms a job.
HEAD_REVISION = "0011"
# Any constant works; it only has to be the same for every flow-tracker process.
_PG_ADVISORY_LOCK_KEY = 0x666C6F77  # "flow"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (and at ``connection``)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    """The newest revision shipped with this version of flow-tracker."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def answering_revision(store: Store) -> str | None:
    """Ask the database to answer, then read its revision (None: never migrated).

    For a readiness probe: it never migrates. Raises the driver's or the pool's
    error when the database does not answer.
    """
    with store.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        try:
            row = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
        except DBAPIError:
            # No version table: a database flow-tracker has never migrated.
            row = None
    return None if row is None else str(row[0])


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``, waiting for any other process doing the same."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (waiting for any other process migrating)."""
    _migrate(engine, "downgrade", revision)


# Alembic runs a migration through module-level proxies (``alembic.op``,
# ``alembic.context``): two threads of one process migrating at once (a background
# thread's first use and the main thread's, even of two databases) would tear them down
# under each other. The database's own lock below serialises processes; this, threads.
_MIGRATING = threading.Lock()


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    from alembic import command

    with _MIGRATING, engine.connect() as conn:
        conn = conn.execution_options(flow_tracker_begin="IMMEDIATE")
        with conn.begin():
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_ADVISORY_LOCK_KEY})")
            move = command.upgrade if direction == "upgrade" else command.downgrade
            move(alembic_config(conn), revision)


def driver_revision(conn: Any) -> str | None:
    """The revision in the version table, read on a driver connection (None if there is none)."""
    try:
        row = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone()
    except Exception:  # no version table yet: a new database
        return None
    return None if row is None else str(row[0])
