"""The GraphQL schema of the dashboard, in SDL, and the resolvers wired to it.

Field names are the REST API's keys in camelCase (``created_at`` → ``createdAt``),
with the same values: :func:`field_value` reads a resolver's dict by the snake_case
key, so a type needs no resolver of its own. Times are ISO 8601 strings, ids
UUID strings, payloads (metadata, job arguments, log data, context, results)
the ``JSON`` scalar — or ``"[hidden]"`` without ``payloads:read``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from graphql import GraphQLObjectType, GraphQLResolveInfo, GraphQLSchema, build_schema

import flow_tracker.web.graphql_resolvers as resolvers

_PROCESS_FIELDS = """
  id: ID!
  name: String!
  category: String!
  "queued, running, retrying, completed, failed, lost, ..."
  status: String!
  "Metadata; its values are \\"[hidden]\\" without payloads:read (its keys stay)."
  metadata: JSON
  error: ErrorInfo
  createdAt: String!
  queuedAt: String
  startedAt: String
  finishedAt: String
  durationMs: Float
  progress: Progress!
  jobSystem: String
  jobId: String
  queue: String
  attempt: Int!
  parentProcessId: ID
  host: String
  pid: Int
  heartbeatAt: String
  droppedLogs: Int!
  "The job's arguments; \\"[hidden]\\" without payloads:read."
  jobArgs: JSON
  requeuedFromId: ID
  lostCount: Int!
  "True when payload values show as \\"[hidden]\\" (no payloads:read)."
  hidden: Boolean!
"""

_DELIVERY_FIELDS = """
  "sent, nothing to send, or waiting (for a worker of a queue: see waitingFor)."
  delivery: String!
  "The queues whose worker will send what waits in the outbox."
  waitingFor: [String!]!
  "For people: sent, or waiting for a worker of <queue>."
  message: String!
  "The run as it is now (needs runs:read)."
  run: WorkflowRun
"""

SDL = f"""
"Any JSON value: an object, a list, a string, a number, a boolean or null."
scalar JSON

"Reading needs runs:read; payload values need payloads:read."
type Query {{
  "Processes newest first, filtered; pass nextCursor as cursor for the next page."
  processes(
    status: [String!]
    category: [String!]
    "The exact process name."
    name: String
    "1 to 100."
    limit: Int = 50
    cursor: String
  ): ProcessPage
  "One process with its flows (depth first), logs and status history; null if none has this id."
  process(id: ID!): ProcessDetail
  "Workflow runs newest first; every tag given must match."
  workflowRuns(
    name: String
    "running, completed, failed or cancelled."
    status: String
    tags: [TagInput!]
    "1 to 100."
    limit: Int = 50
    cursor: String
  ): WorkflowRunPage
  "One run with every step; null if none has this id."
  workflowRun(id: ID!): WorkflowRun
  "Every recorded workflow version, with its steps."
  workflowDefinitions: [WorkflowDefinition!]
}}

"Each action needs its permission (workflows:start, retry, resolve, cancel) and is audited."
type Mutation {{
  "Start a run from its recorded definition; a repeated idempotencyKey returns the run it started."
  startWorkflow(
    namespace: String = "default"
    name: String!
    "Default: the newest version."
    version: String
    "A JSON object passed to every step."
    context: JSON
    idempotencyKey: String
    "Steps that count as resolved with result null."
    skip: [String!]
    tags: [TagInput!]
    reason: String
  ): StartResult
  "Run a failed step again, then whatever waits on it."
  retryStep(runId: ID!, step: String!, reason: String): StepAction
  "Mark a failed step done with result, so that what waits on it goes on."
  resolveStep(runId: ID!, step: String!, result: JSON, reason: String): StepAction
  "Cancel a run: no step that has not started starts."
  cancelWorkflow(runId: ID!, reason: String): CancelResult
  "Retry every failed step of a run."
  retryFailedSteps(runId: ID!, reason: String): RetryFailedResult
}}

input TagInput {{
  "1 to 64 letters, digits, _ . -"
  key: String!
  value: String!
}}

type Tag {{
  key: String!
  value: String!
}}

type ErrorInfo {{
  "The exception's class."
  type: String!
  "Reads \\"[hidden]\\" without payloads:read."
  message: String
  "Reads \\"[hidden]\\" without payloads:read."
  traceback: String
}}

type Progress {{
  current: Float!
  total: Float!
}}

type ProcessPage {{
  items: [Process!]!
  nextCursor: String
}}

type Process {{{_PROCESS_FIELDS}}}

type ProcessDetail {{{_PROCESS_FIELDS}
  "Every flow, depth first; parentId and depth give the tree."
  flows: [Flow!]!
  "The entries written on the process itself, outside any flow."
  logs: [LogEntry!]!
  history: [Transition!]!
  counts: Counts!
  "True when there are more flows or logs than the 10,000 each answered."
  truncated: Boolean!
}}

type Flow {{
  id: ID!
  parentId: ID
  name: String!
  status: String!
  "Values \\"[hidden]\\" without payloads:read."
  metadata: JSON
  error: ErrorInfo
  startedAt: String!
  finishedAt: String
  durationMs: Float
  attempt: Int!
  position: Int!
  "0 for a top-level flow."
  depth: Int!
  logs: [LogEntry!]!
}}

type LogEntry {{
  id: ID!
  flowId: ID
  level: String!
  message: String!
  "Reads \\"[hidden]\\" without payloads:read."
  data: JSON
  createdAt: String!
  position: Int!
}}

type Transition {{
  status: String!
  at: String!
  attempt: Int
  "Reads \\"[hidden]\\" without payloads:read when it may hold an error's message."
  reason: String
}}

type Counts {{
  flows: Int!
  logs: Int!
}}

type WorkflowRunPage {{
  items: [WorkflowRunSummary!]!
  nextCursor: String
}}

type WorkflowRunSummary {{
  id: ID!
  name: String!
  queue: String!
  status: String!
  failedStep: String
  version: String
  tags: [Tag!]!
  stepsDone: Int!
  stepsTotal: Int!
  createdAt: String!
  finishedAt: String
  durationMs: Float
}}

type WorkflowRun {{
  id: ID!
  name: String!
  namespace: String!
  version: String!
  tags: [Tag!]!
  queue: String!
  status: String!
  "The step that failed first, in a failed run."
  failedStep: String
  "Reads \\"[hidden]\\" without payloads:read."
  context: JSON
  createdAt: String
  finishedAt: String
  steps: [Step!]!
  "True when payload values show as \\"[hidden]\\" (no payloads:read)."
  hidden: Boolean!
}}

type Step {{
  name: String!
  status: String!
  attempts: Int!
  "Reads \\"[hidden]\\" without payloads:read."
  result: JSON
  "ErrorClass: message; the message \\"[hidden]\\" without payloads:read."
  error: String
  processId: ID
  dependsOn: [String!]!
  blockedBy: String
  nextAttemptAt: String
  queuedAt: String
  startedAt: String
  finishedAt: String
  durationMs: Float
  "waiting for a worker of <queue>, while its message waits in the outbox."
  delivery: String
  deliveryWaitingS: Float
}}

type WorkflowDefinition {{
  namespace: String!
  name: String!
  version: String!
  description: String
  queue: String!
  queueName: String
  module: String
  "Each step: name, depends_on, queue, retries..."
  steps: JSON
  firstSeen: String!
  lastSeen: String!
}}

type StartResult {{
  id: ID!
  namespace: String!
  name: String!
  version: String!
  "False: the idempotency key had started this run before; nothing new was started."
  created: Boolean!
  "The run's page on the dashboard."
  url: String!{_DELIVERY_FIELDS}}}

type StepAction {{
  runId: ID!
  step: String!{_DELIVERY_FIELDS}}}

type RetryFailedResult {{
  runId: ID!
  "The failed steps queued again."
  retried: [String!]!{_DELIVERY_FIELDS}}}

type CancelResult {{
  runId: ID!
  "Steps that had not started and now will not."
  cancelledSteps: Int!
  message: String!
  "The run as it is now (needs runs:read)."
  run: WorkflowRun
}}
"""

_ROOT = {
    "Query": {
        "processes": resolvers.processes,
        "process": resolvers.process,
        "workflowRuns": resolvers.workflow_runs,
        "workflowRun": resolvers.workflow_run,
        "workflowDefinitions": resolvers.workflow_definitions,
    },
    "Mutation": {
        "startWorkflow": resolvers.start_workflow,
        "retryStep": resolvers.retry_step,
        "resolveStep": resolvers.resolve_step,
        "cancelWorkflow": resolvers.cancel_workflow,
        "retryFailedSteps": resolvers.retry_failed_steps,
    },
}
_RUN_FIELDS = ("StartResult", "StepAction", "RetryFailedResult", "CancelResult")


@functools.cache
def schema() -> GraphQLSchema:
    """The schema, built once per process, with its resolvers."""
    built = build_schema(SDL)
    for type_name, fields in _ROOT.items():
        root = built.get_type(type_name)
        if not isinstance(root, GraphQLObjectType):  # pragma: no cover - the SDL above
            raise TypeError(f"{type_name} is not an object type")
        for name, resolve in fields.items():
            root.fields[name].resolve = resolve
    for type_name in _RUN_FIELDS:
        payload = built.get_type(type_name)
        if isinstance(payload, GraphQLObjectType):
            payload.fields["run"].resolve = resolvers.run_after_action
    return built


_UPPER = re.compile(r"(?<!^)(?=[A-Z])")


@functools.cache
def snake(name: str) -> str:
    """``createdAt`` → ``created_at``: the REST key a GraphQL field reads."""
    return _UPPER.sub("_", name).lower()


def field_value(source: Any, info: GraphQLResolveInfo[Any], **_args: Any) -> Any:
    """The value of a field without a resolver: its REST key of the parent's dict."""
    if isinstance(source, dict):
        return source.get(snake(info.field_name))
    return getattr(source, snake(info.field_name), None)
