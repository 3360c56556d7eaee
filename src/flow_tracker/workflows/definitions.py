"""Workflow definitions: recorded by every process that declares them, listed without user code.

A definition is one (namespace, name, version) with its DAG snapshot (steps and
their options), queue and declaring module. Declaring does no I/O:
a process records the definitions it declares on first use —

* a start (:func:`flow_tracker.start_workflow`, ``wf.run``) records that version;
* a worker's queue install records every version declared so far, in the
  background (an install never waits for the database), and a worker's first
  step of a version records that version (declared after the install);
* :func:`list_workflow_definitions` records what this process declares first.

Each process writes each version once (again only if its snapshot changed, a
module reloaded with other steps), so a fleet of workers costs one upsert per
worker and version, not one per run.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flow_tracker import config, runtime
from flow_tracker.store import definitions as stored
from flow_tracker.store.engine import Store
from flow_tracker.store.types import as_utc
from flow_tracker.workflows.database import workflow_store
from flow_tracker.workflows.definition import Workflow, declared_versions, version_key


@dataclass(frozen=True)
class WorkflowDefinition:
    """A declared workflow version as stored: what pages, the API and the CLI start runs of."""

    namespace: str
    name: str
    version: str
    description: str | None
    steps: list[dict[str, Any]]
    """Each step's snapshot: ``name``, ``depends_on``, retry options, ``queue_name``."""
    queue: str
    module: str | None
    first_seen: datetime
    last_seen: datetime
    queue_name: str = ""
    """The queue the workflow's steps go to unless a step says otherwise."""

    @property
    def ref(self) -> str:
        """``namespace/name``: how :func:`flow_tracker.start_workflow` names it."""
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "queue": self.queue,
            "queue_name": self.queue_name,
            "module": self.module,
            "steps": self.steps,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
        }


def from_row(row: Any) -> WorkflowDefinition:
    """A :class:`WorkflowDefinition` from its stored row."""
    dag = row.dag if isinstance(row.dag, dict) else {}
    steps = dag.get("steps")
    return WorkflowDefinition(
        namespace=row.namespace,
        name=row.name,
        version=row.version,
        description=row.description,
        steps=[s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else [],
        queue=row.queue,
        module=row.module,
        first_seen=as_utc(row.first_seen),
        last_seen=as_utc(row.last_seen),
        queue_name=row.queue_name,
    )


def of_declared(wf: Workflow) -> WorkflowDefinition:
    """A declaration here as a :class:`WorkflowDefinition` (seen now, not read back)."""
    moment = datetime.now(timezone.utc)
    return WorkflowDefinition(
        namespace=wf.namespace,
        name=wf.name,
        version=wf.version,
        description=wf.description,
        steps=wf.snapshot()["steps"],
        queue=wf.queue,
        module=wf.module,
        first_seen=moment,
        last_seen=moment,
        queue_name=wf.queue_name,
    )


def as_stored(wf: Workflow) -> dict[str, Any]:
    """The row a declaration is recorded as."""
    return {
        "namespace": wf.namespace,
        "name": wf.name,
        "version": wf.version,
        "description": wf.description,
        "dag": wf.snapshot(),
        "queue": wf.queue,
        "queue_name": wf.queue_name,
        "module": wf.module,
    }


# What this process recorded, per store (a store is one database for one configuration)
# and version: which declaration, with how many steps. Checked on every start and a
# worker's every step, so it is two numbers, not the snapshot (a 2,000-step DAG takes
# milliseconds to serialise); a module reloaded makes a new declaration, recorded again.
_recorded: weakref.WeakKeyDictionary[Store, dict[tuple[str, str, str], tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def ensure_recorded(wf: Workflow, store: Store | None = None) -> bool:
    """Record ``wf``'s definition unless this process already did; True when it is stored.

    Never raises: a definition that cannot be stored now (the database away) is
    tried again on the next use, and whatever was being done goes on.
    """
    if not wf.steps:
        return False
    try:
        chosen = store or runtime.store()
        key = (wf.namespace, wf.name, wf.version)
        mark = (id(wf), len(wf.steps))
        with _lock:
            if _recorded.get(chosen, {}).get(key) == mark:
                return True
        chosen.ensure_schema()
        stored.record(chosen, as_stored(wf))
        with _lock:
            _recorded.setdefault(chosen, {})[key] = mark
        return True
    except Exception as exc:
        runtime.report_internal_error(exc, f"recording the definition of workflow {wf.name}")
        return False


def record_declared(store: Store | None = None) -> int:
    """Record every version declared in this process not recorded yet; return how many are."""
    return sum(1 for wf in declared_versions() if ensure_recorded(wf, store))


_background: threading.Thread | None = None
# Stores asked for and not recorded into yet, by identity, in the order asked.
_pending: dict[int, Store] = {}


def record_declared_soon(store: Store | None = None) -> None:
    """Record this process's declarations in a background thread (a worker's install).

    Into the database in force *now* (or ``store``): the thread may run after
    the process was configured for another one, which never asked for them. One
    thread at a time; a call while it runs makes it go round once more, so a
    workflow declared after the install is recorded too.
    """
    global _background
    settings = config.in_force()
    if settings is None or not settings.enabled:
        return
    try:
        chosen = store or runtime.store()
    except Exception as exc:  # never the caller's problem: tried again on the next use
        runtime.report_internal_error(exc, "recording the workflows declared here")
        return
    with _lock:
        _pending[id(chosen)] = chosen
        # Not alive in a forked child (only the forking thread is copied): start one there.
        if _background is not None and _background.is_alive():
            return
        _background = threading.Thread(
            target=_record_in_background, name="flow-tracker-definitions", daemon=True
        )
        _background.start()


def _record_in_background() -> None:
    global _background
    while True:
        with _lock:  # decided under the lock: a call now either sees us or starts another
            if not _pending:
                _background = None
                return
            stores = list(_pending.values())
            _pending.clear()
        for store in stores:
            record_declared(store)


def wait_recorded(timeout: float | None = None) -> bool:
    """Wait for the background recording to end; False if it still ran after ``timeout`` s.

    For whoever empties or swaps the database under this process (tests).
    """
    with _lock:
        thread = _background
    if thread is not None:
        thread.join(timeout)
        return not thread.is_alive()
    return True


def clear_recorded() -> None:
    """Forget what this process recorded (tests; a database emptied under it)."""
    with _lock:
        _recorded.clear()


def list_workflow_definitions(*, store: Store | None = None) -> list[WorkflowDefinition]:
    """Every workflow version any process declared, by namespace, name and version (newest first).

    Recorded by the processes that declare them (this one's first), so the list
    needs no user code: what the dashboard's definitions page and
    ``flow-tracker workflows definitions`` show.
    """
    chosen = store or workflow_store()
    chosen.ensure_schema()
    if store is None:
        record_declared(chosen)
    found = [from_row(row) for row in stored.list_all(chosen)]
    found.sort(key=lambda d: version_key(d.version), reverse=True)
    found.sort(key=lambda d: (d.namespace, d.name))
    return found


def stored_versions(store: Store, namespace: str, name: str) -> list[WorkflowDefinition]:
    """The stored versions of one workflow, newest first."""
    found = [from_row(row) for row in stored.versions_of(store, namespace, name)]
    return sorted(found, key=lambda d: version_key(d.version), reverse=True)
