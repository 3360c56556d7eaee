"""The OpenAPI 3.1 document of the dashboard's JSON API, written out by hand.

Hand-written because the API is small and its shapes are the records'
``to_dict`` forms; a test checks that every path here answers as described.
"""

from __future__ import annotations

from typing import Any

from flow_tracker import __version__
from flow_tracker.status import RunState, Status
from flow_tracker.web.params import DEFAULT_LIMIT, MAX_LIMIT, RANGES
from flow_tracker.web.statistics import WINDOWS

_STATUS_VALUES = [s.value for s in Status]


_HEALTH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "healthy": {"type": "boolean"},
        "running": {"type": "integer"},
        "silent": {"type": "integer"},
        "lost": {"type": "integer"},
        "stale_queued": {"type": "integer"},
        "oldest_queued_age_s": {"type": ["number", "null"]},
        "last_reap": {"type": ["string", "null"], "format": "date-time"},
        "checked_at": {"type": "string", "format": "date-time"},
    },
    "required": ["healthy", "running", "silent", "lost", "stale_queued", "checked_at"],
}


def _query(
    name: str, description: str, schema: dict[str, Any], many: bool = False
) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "array", "items": schema} if many else schema,
    }
    if many:
        param["explode"] = True
    return param


LIST_PARAMETERS = [
    _query(
        "status", "Only these statuses (repeat or comma-separate).", {"enum": _STATUS_VALUES}, True
    ),
    _query("category", "Only these categories.", {"type": "string"}, True),
    _query("name", "Exact process name.", {"type": "string"}),
    _query(
        "q",
        "Text in the process name or any of its log messages "
        "(403 without the payloads:read permission).",
        {"type": "string"},
    ),
    _query(
        "meta",
        "Metadata filter key=value (numbers, true/false/null and quoted strings as JSON; "
        "403 without the payloads:read permission).",
        {"type": "string"},
        True,
    ),
    _query("range", "Created within the last …", {"enum": list(RANGES)}),
    _query("since", "Created at or after (ISO 8601).", {"type": "string", "format": "date-time"}),
    _query("until", "Created before (ISO 8601).", {"type": "string", "format": "date-time"}),
    _query("order", "newest (default) or oldest first.", {"enum": ["newest", "oldest"]}),
    _query(
        "limit",
        f"Page size (clamped to 1..{MAX_LIMIT}).",
        {"type": "integer", "default": DEFAULT_LIMIT, "minimum": 1, "maximum": MAX_LIMIT},
    ),
    _query("cursor", "next_cursor of the previous page.", {"type": "string"}),
]

HIDING = (
    "Payload values are hidden from a principal without the payloads:read permission "
    "(the viewer role, or a custom set): metadata values (their keys stay), job_args, "
    "log entries' data, error messages and tracebacks (the error's type stays), a "
    "workflow's context, its steps' results, step errors' messages, and the values of a "
    'comparison each read "[hidden]"; a field that holds nothing stays null. Such an '
    'answer says "hidden": true at its top and on each item of a list. Searching (q) '
    "and metadata filters (meta) answer 403 for that principal: a match would confirm "
    "a hidden value."
)
_HIDDEN_FLAG: dict[str, Any] = {
    "const": True,
    "description": 'Present (true) when payload values read "[hidden]"; see the API description.',
}

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    "required": ["error", "status"],
}
_ERROR_RESPONSE = {
    "description": "The reason, as JSON.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_PROCESS = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "category": {"type": "string"},
        "status": {"enum": _STATUS_VALUES},
        "metadata": {"type": "object"},
        "error": {"type": ["object", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "duration_ms": {"type": ["number", "null"]},
        "progress": {"type": "object"},
        "job_system": {"type": ["string", "null"]},
        "job_id": {"type": ["string", "null"]},
        "queue": {"type": ["string", "null"]},
        "attempt": {"type": "integer"},
        "job_args": {},
        "hidden": _HIDDEN_FLAG,
    },
    "required": ["id", "name", "category", "status", "created_at"],
}


_COMPARISON = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "found": {"type": "boolean"},
        "run": {"type": "object"},
        "baseline": {"type": ["object", "null"]},
        "baseline_chosen": {"type": "boolean"},
        "notes": {"type": "array", "items": {"type": "string"}},
        "duration": {"type": "object"},
        "flow_counts": {"type": "object"},
        "flows_listed": {"enum": ["differing", "all"]},
        "flows": {"type": "array", "items": {"type": "object"}},
        "metadata": {"type": "array", "items": {"type": "object"}},
        "first_log_difference": {"type": ["object", "null"]},
        "logs_compared": {"type": "integer"},
        "steps": {"type": ["array", "null"], "items": {"type": "object"}},
        "hidden": _HIDDEN_FLAG,
    },
    "required": ["summary", "found", "run", "baseline", "flows", "metadata", "steps"],
}


_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


_RETRIED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "run_id": {"type": "string", "format": "uuid"},
        "retried": {"type": "array", "items": {"type": "string"}},
        "delivery": {"enum": ["sent", "nothing to send", "waiting"]},
        "waiting_for": {"type": "array", "items": {"type": "string"}},
        "message": {"type": "string"},
    },
    "required": ["run_id", "retried", "delivery", "waiting_for", "message"],
}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_START_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "context": {"type": ["object", "null"]},
        "version": {"type": ["string", "null"], "description": "Default: the newest recorded."},
        "idempotency_key": {"type": ["string", "null"], "maxLength": 255},
        "skip": {"type": ["array", "null"], "items": {"type": "string"}},
        "tags": {
            "type": ["object", "null"],
            "additionalProperties": {"type": "string", "maxLength": 255},
            "maxProperties": 20,
        },
        "reason": {"type": ["string", "null"]},
    },
}
_STARTED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "namespace": {"type": "string"},
        "name": {"type": "string"},
        "version": {"type": "string"},
        "created": {"type": "boolean"},
        "delivery": {"enum": ["sent", "waiting", "nothing to send", "existing run"]},
        "waiting_for": {"type": "array", "items": {"type": "string"}},
        "message": {"type": "string"},
        "url": {"type": "string"},
        "run": {"type": "object"},
        "hidden": _HIDDEN_FLAG,
    },
    "required": ["id", "namespace", "name", "version", "created", "delivery", "run"],
}
_DEFINITION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "namespace": {"type": "string"},
        "name": {"type": "string"},
        "version": {"type": "string"},
        "description": {"type": ["string", "null"]},
        "queue": {"type": "string"},
        "queue_name": {"type": "string"},
        "module": {"type": ["string", "null"]},
        "steps": {"type": "array", "items": {"type": "object"}},
        "first_seen": {"type": "string", "format": "date-time"},
        "last_seen": {"type": "string", "format": "date-time"},
    },
    "required": ["namespace", "name", "version", "queue", "steps", "first_seen", "last_seen"],
}


_AUDIT_ENTRY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "actor": {"type": "string"},
        "role": {"type": "string"},
        "via": {"type": "string"},
        "action": {"type": "string"},
        "target": {"type": ["string", "null"]},
        "outcome": {"enum": ["allowed", "refused", "failed"]},
        "detail": {"type": ["object", "null"]},
        "client": {"type": ["string", "null"]},
        "request_id": {"type": ["string", "null"]},
        "times": {"type": "integer"},
    },
    "required": ["id", "at", "actor", "role", "via", "action", "outcome", "times"],
}


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(server_url: str = "/") -> dict[str, Any]:
    """The OpenAPI document, with the mount prefix as its server URL."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "flow-tracker API",
            "version": __version__,
            "description": "Read what background jobs and processes did: "
            "processes, their flows and logs, job statuses and statistics. " + HIDING,
        },
        "servers": [{"url": server_url}],
        "paths": {
            "/api/processes": {
                "get": {
                    "operationId": "listProcesses",
                    "summary": "Processes, newest first, filtered, one page at a time.",
                    "parameters": LIST_PARAMETERS,
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Process"},
                                    },
                                    "next_cursor": {"type": ["string", "null"]},
                                    "hidden": _HIDDEN_FLAG,
                                },
                                "required": ["items", "next_cursor"],
                            },
                            "A page of processes.",
                        ),
                        "400": _ERROR_RESPONSE,
                        "403": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/processes/{process_id}": {
                "get": {
                    "operationId": "getProcess",
                    "summary": "One process with its flow tree and log entries.",
                    "parameters": [
                        {
                            "name": "process_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        }
                    ],
                    "responses": {
                        "200": _ok(
                            {"$ref": "#/components/schemas/Process"},
                            "The process, with flows, logs, history, counts and truncated.",
                        ),
                        "404": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/processes/{process_id}/compare": {
                "get": {
                    "operationId": "compareProcess",
                    "summary": "What changed since it last worked: a run beside its baseline.",
                    "description": "Flows matched by their path of names (added, removed, "
                    "failed, status, slower, faster, same, with both durations and the "
                    "ratio), metadata keys added, removed or changed (values redacted), the "
                    "first log line that differs, attempts, duration, queue wait and errors. "
                    "With no earlier good run, found is false and summary says so.",
                    "parameters": [
                        {
                            "name": "process_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        },
                        _query(
                            "with",
                            "The baseline's process id; default: the last completed run of "
                            "the same name that started before this one.",
                            {"type": "string", "format": "uuid"},
                        ),
                        _query(
                            "flows",
                            "differing (default): the flows that differ and the flows above "
                            "them; all: every flow of both runs.",
                            {"enum": ["differing", "all"], "default": "differing"},
                        ),
                    ],
                    "responses": {
                        "200": _ok(_COMPARISON, "The comparison."),
                        "400": _ERROR_RESPONSE,
                        "404": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/status/{id}": {
                "get": {
                    "operationId": "getStatus",
                    "summary": "Status and progress by process id or by the queue's job id.",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "description": "A process id, a Celery task id, an RQ job id "
                            "or a Dramatiq message id.",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "process_id": {"type": "string"},
                                    "status": {"enum": _STATUS_VALUES},
                                    "progress": {"type": "number"},
                                    "current": {"type": "number"},
                                    "total": {"type": "number"},
                                    "metadata": {"type": "object"},
                                    "error": {"type": ["object", "null"]},
                                    "hidden": _HIDDEN_FLAG,
                                },
                                "required": ["process_id", "status", "progress"],
                            },
                            "The status.",
                        ),
                        "404": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/stats": {
                "get": {
                    "operationId": "getStats",
                    "summary": "The overview's numbers for a window.",
                    "parameters": [
                        _query(
                            "window",
                            "The window to summarise.",
                            {"enum": list(WINDOWS), "default": "24h"},
                        )
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "finished": {"type": "object"},
                                    "failure_rate": {"type": ["number", "null"]},
                                    "throughput": {"type": "object"},
                                    "slowest_processes": {"type": "array"},
                                    "slowest_flows": {"type": "array"},
                                    "recent_failures": {"type": "array"},
                                    "hidden": _HIDDEN_FLAG,
                                },
                                "required": ["finished", "throughput"],
                            },
                            "Counts, throughput, failure rate and slowest names.",
                        ),
                        "400": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/workflows": {
                "get": {
                    "operationId": "listWorkflows",
                    "summary": "Workflow runs, newest first.",
                    "parameters": [
                        _query("name", "Only runs of this workflow.", {"type": "string"}),
                        _query(
                            "status",
                            "Only runs in this status.",
                            {"enum": [s.value for s in RunState]},
                        ),
                        _query("limit", "Runs per page.", {"type": "integer", "default": 50}),
                        _query("before", "next_cursor of the previous page.", {"type": "string"}),
                        _query(
                            "tag",
                            "Only runs with this tag, as key:value (repeat: every one).",
                            {"type": "string"},
                            True,
                        ),
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": {"type": "object"}},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                                "required": ["items", "next_cursor"],
                            },
                            "Runs with steps done of total and the failed step.",
                        ),
                        "400": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/workflows/{run_id}": {
                "get": {
                    "operationId": "getWorkflow",
                    "summary": "A run: every step's status, attempts, result and error.",
                    "parameters": [_RUN_ID],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "required": [
                                    "id",
                                    "name",
                                    "namespace",
                                    "version",
                                    "tags",
                                    "status",
                                    "failed_step",
                                    "steps",
                                ],
                            },
                            "The run, the definition's namespace and version it was started"
                            " with, its tags; context and results redacted.",
                        ),
                        "404": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/workflows/{run_id}/diagram": {
                "get": {
                    "operationId": "getWorkflowDiagram",
                    "summary": "A run as Mermaid flowchart text, steps coloured by status.",
                    "parameters": [_RUN_ID],
                    "responses": {
                        "200": {
                            "description": "Mermaid text.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "404": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/workflows/{run_id}/retry-failed": {
                "post": {
                    "operationId": "retryFailedSteps",
                    "summary": "Retry every failed step of a run (JSON body; refused read-only).",
                    "parameters": [_RUN_ID],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"reason": {"type": ["string", "null"]}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _ok(_RETRIED, "The steps retried and what became of them."),
                        "400": _ERROR_RESPONSE,
                        "403": _ERROR_RESPONSE,
                        "404": _ERROR_RESPONSE,
                        "409": _ERROR_RESPONSE,
                        "413": _ERROR_RESPONSE,
                        "415": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/workflows/{namespace}/{name}/runs": {
                "post": {
                    "operationId": "startWorkflow",
                    "summary": "Start a run of a recorded workflow (JSON body; refused read-only).",
                    "parameters": [_path("namespace"), _path("name")],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _START_REQUEST}},
                    },
                    "responses": {
                        "201": _ok(_STARTED, "The new run and what became of its first steps."),
                        "200": _ok(_STARTED, "The run this idempotency key started before."),
                        "400": _ERROR_RESPONSE,
                        "403": _ERROR_RESPONSE,
                        "404": _ERROR_RESPONSE,
                        "413": _ERROR_RESPONSE,
                        "415": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/workflow-definitions": {
                "get": {
                    "operationId": "listWorkflowDefinitions",
                    "summary": "Every recorded workflow version: its steps, queue and module.",
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": _DEFINITION},
                                },
                                "required": ["items"],
                            },
                            "Definitions by namespace and name, newest version first.",
                        ),
                    },
                }
            },
            "/api/audit": {
                "get": {
                    "operationId": "listAudit",
                    "summary": "The audit log, newest first: who did what, allowed, refused or "
                    "failed (needs audit:read; never a payload value).",
                    "parameters": [
                        _query("actor", "Only this actor's rows (exact name).", {"type": "string"}),
                        _query(
                            "action", "Only this action, e.g. jobs:requeue.", {"type": "string"}
                        ),
                        _query(
                            "outcome",
                            "Only this outcome.",
                            {"enum": ["allowed", "refused", "failed"]},
                        ),
                        _query("target", "Only rows about this target.", {"type": "string"}),
                        _query("range", "Within the last …", {"enum": list(RANGES)}),
                        _query(
                            "since",
                            "At or after (ISO 8601).",
                            {"type": "string", "format": "date-time"},
                        ),
                        _query(
                            "until",
                            "Before (ISO 8601).",
                            {"type": "string", "format": "date-time"},
                        ),
                        _query(
                            "limit",
                            "Page size (clamped to 1..200).",
                            {"type": "integer", "default": 50},
                        ),
                        _query("cursor", "next_cursor of the previous page.", {"type": "string"}),
                    ],
                    "responses": {
                        "200": _ok(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": _AUDIT_ENTRY},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                                "required": ["items", "next_cursor"],
                            },
                            "A page of audit rows.",
                        ),
                        "400": _ERROR_RESPONSE,
                        "403": _ERROR_RESPONSE,
                    },
                }
            },
            "/api/health": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Lost, silent and stale jobs now (for probes: 503 when unhealthy).",
                    "responses": {
                        "200": _ok(_HEALTH, "Healthy: no silent, lost or stale job."),
                        "503": _ok(_HEALTH, "Unhealthy: the same report."),
                    },
                }
            },
        },
        "components": {"schemas": {"Process": _PROCESS, "Error": _ERROR}},
    }
    return _secured(doc)


SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`flow-tracker tokens create`): `ft_<id>_<secret>`. "
        "Accepted on /api/* and /metrics only; never admin.",
    },
    "basicAuth": {
        "type": "http",
        "scheme": "basic",
        "description": "The dashboard's basic-auth users (`create_app(basic_auth=...)`, "
        "`flow-tracker serve --basic-auth`), each with a role.",
    },
}
_REFUSALS = {
    "401": {
        "description": "Not authenticated, or a bad, expired or revoked token "
        "(`WWW-Authenticate` says which scheme to use).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "403": {
        "description": "Authenticated, without the permission this operation needs "
        "(or a read-only dashboard).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
}


def _secured(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with its security schemes and every operation's 401 and 403.

    A dashboard mounted in a host app may instead be guarded by the host's own
    login (an ``auth`` hook); the empty requirement says a dashboard without
    authentication answers without credentials.
    """
    doc["components"]["securitySchemes"] = SECURITY_SCHEMES
    doc["security"] = [{"bearerAuth": []}, {"basicAuth": []}, {}]
    for operations in doc["paths"].values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in _REFUSALS.items():
                responses.setdefault(status, response)
    return doc
