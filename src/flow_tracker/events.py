"""The changes the job's thread hands to the background writer: the writer's protocol.

This module owns the protocol: the kinds, the tuple shapes and the extra keys a
process update may carry. Changes are plain tuples (the cheapest thing to build
in the hot path); the first item says which kind. (The public word "event" means
what subscribers of :func:`flow_tracker.on` receive: dicts made from these.)
Ids are UUIDv7 integers (:mod:`flow_tracker.ids`), times are ``time.time()``
floats; nothing is converted or scrubbed until the writer does it.

=================  ============================================================
kind               tuple
=================  ============================================================
``MARKER``         ``(MARKER, threading.Event)`` - set once all before it is stored
``PROCESS_START``  ``(PROCESS_START, process_id, row: dict)`` - upserted
``PROCESS_UPDATE`` ``(PROCESS_UPDATE, process_id, fields: dict)`` - merged, last wins
``FLOW_START``     ``(FLOW_START, flow_id, process_id, parent_id | None, name,
                   metadata | None, started_at, position, depth, attempt)``
``FLOW_END``       ``(FLOW_END, flow_id, status, finished_at, duration_ms,
                   error | None, metadata | None)``
``FLOW_UPDATE``    ``(FLOW_UPDATE, flow_id, metadata)``
``LOG``            ``(LOG, log_id, process_id, flow_id | None, level, message,
                   data | None, created_at, position)``
=================  ============================================================

``error`` is ``(class name, message, formatted traceback)``. Process rows and
fields use the column names of :data:`flow_tracker.store.schema.processes`,
with times as floats, plus two keys that are no column:

* :data:`ENDED_ATTEMPT` - in the fields of a process's end: the attempt that
  ended. Such an update is never applied over a row a later attempt of the same
  job has started.
* :data:`TRANSITION_REASON` - in the fields of a status change: why (a skip's
  reason), kept in the state history only.

Their values start with ``b_`` because the writer binds them as SQL parameters
beside the column names, where they must not collide with a column.
"""

from __future__ import annotations

from typing import Any

MARKER = 0
PROCESS_START = 1
PROCESS_UPDATE = 2
FLOW_START = 3
FLOW_END = 4
FLOW_UPDATE = 5
LOG = 6

ENDED_ATTEMPT = "b_attempt"
TRANSITION_REASON = "b_reason"

Change = tuple[Any, ...]
ErrorTuple = tuple[str, str, "str | None"]
