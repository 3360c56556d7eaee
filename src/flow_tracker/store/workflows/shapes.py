"""Each run's DAG snapshot, parsed once and kept for the next reads of the run."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from flow_tracker.store.schema import workflow_runs


@dataclass(frozen=True)
class DagShape:
    """A run's DAG snapshot, parsed once: it never changes after the run was created.

    Shared by every read of the run in this process: read it, never change it.
    """

    dag: dict[str, Any]
    order: list[str]
    """The steps in declaration order (a topological order)."""
    parents: dict[str, list[str]]


# Parsed DAGs of recently read runs. A 2,000-step DAG took ~8 ms to parse and ~6,000
# objects to hold, on every view of its page while the run was watched.
_SHAPES: OrderedDict[uuid.UUID, DagShape] = OrderedDict()
_SHAPES_KEPT = 64
_shapes_lock = threading.Lock()


def dag_shape(conn: Connection, run_id: uuid.UUID) -> DagShape:
    """The run's parsed DAG, from the cache or read in ``conn``."""
    with _shapes_lock:
        shape = _SHAPES.get(run_id)
        if shape is not None:
            _SHAPES.move_to_end(run_id)
            return shape
    dag = dict(
        conn.execute(select(workflow_runs.c.dag).where(workflow_runs.c.id == run_id)).scalar() or {}
    )
    declared = dag.get("steps", [])
    shape = DagShape(
        dag,
        [s["name"] for s in declared],
        {s["name"]: list(s.get("depends_on") or ()) for s in declared},
    )
    with _shapes_lock:
        _SHAPES[run_id] = shape
        while len(_SHAPES) > _SHAPES_KEPT:
            _SHAPES.popitem(last=False)
    return shape
