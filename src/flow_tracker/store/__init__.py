"""Storage: the schema, engines, bulk writes, queries and migrations.

The only package with SQL in it. One calling convention holds across it:

* **A public store function takes ``store`` (a** :class:`~flow_tracker.store.engine.Store`
  **) first and owns its transaction**: it opens the connection
  (``store.engine.connect()`` to read, ``store.begin_write()`` to write), does
  all of its work in it, and returns plain values. Callers outside ``store/``
  (the library, ``web/``, ``cli/``, ``workflows/``) call these and never open a
  connection or build a SQL condition themselves. The dashboard's whole reads
  are in :mod:`flow_tracker.store.dashboard` for that reason.
* **A function taking ``conn`` is a piece of another store function's
  transaction**: called by a store function with the connection it opened, so
  that several pieces commit together (a run's lock, its end and the release of
  its children in :mod:`flow_tracker.store.workflows.runs`; the rollups' reads
  in :mod:`flow_tracker.store.rollups`; ``record_transitions``,
  ``outbox.add``, ``audit.write``). Tests may call pieces directly.

Documented exceptions, pieces called from outside ``store/`` today, each for a
reason of its own:

* :mod:`flow_tracker.recovery` opens ``store.begin_write()`` to put a requeue's
  outbox request, its audit row and ``jobs.unclaim_requeue`` /
  ``outbox.mark_failed_in`` into one transaction (to become one store function
  beside :mod:`flow_tracker.store.jobs`);
* the CLI's ``db`` commands read ``migrate.current_revision(conn)`` beside
  Alembic's own script directory, and the demo counts with
  ``queries.count_by_status(conn, ...)`` (both to become store-taking reads);
* :mod:`flow_tracker.store.partitions` takes a *driver* connection by design:
  migrations and the retention thread call it on connections they hold;
* an audit hook (:data:`flow_tracker.store.audit.Hook`) is handed the
  connection of the change it records, so that its row commits with the change.

Modules by concept: :mod:`~flow_tracker.store.queries` (reading processes),
:mod:`~flow_tracker.store.retention` (deleting old history),
:mod:`~flow_tracker.store.rollups` and :mod:`~flow_tracker.store.dashboard`
(statistics), :mod:`~flow_tracker.store.jobs` (a job's rows and the meanings of
silent and stale), :mod:`~flow_tracker.store.workflows` (runs and steps),
:mod:`~flow_tracker.store.step_writes` (a step's claim and end, in driver SQL),
:mod:`~flow_tracker.store.bulk` (the write path), and the rest beside them.
"""
