"""Starting a run: from a declaration here, or from a stored definition.

:func:`start_workflow` names a workflow as ``"namespace/name"`` (or a bare name
in ``default``) and a version (default: the newest declared in this process,
else the newest stored). A process that declares it starts it from its own
declaration; any other (the dashboard, the CLI, a script) starts it from the
definition its workers recorded: the run is made from the stored DAG and its
first steps wait in the outbox for a worker of its queue.

What a start keeps: the version (a worker runs the run's steps with that
version's functions), the tags, the idempotency key (a repeated key returns the
run it started), the skipped steps (resolved with result None) and, in the run's
history, who started it, from where and why.
"""

from __future__ import annotations

import contextlib
import logging
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flow_tracker import config
from flow_tracker.actors import current_actor
from flow_tracker.delivery import NOTHING_SENT, Delivery
from flow_tracker.errors import NotFoundError, UsageError
from flow_tracker.ids import new_id, process_id_for
from flow_tracker.redaction import clean_text, redact_text
from flow_tracker.status import StepState
from flow_tracker.store import audit
from flow_tracker.store import starting as stored
from flow_tracker.store.engine import Store, is_transient
from flow_tracker.workflows import announce
from flow_tracker.workflows.database import unavailable, workflow_store
from flow_tracker.workflows.definition import (
    DEFAULT_NAMESPACE,
    Workflow,
    find_version,
)
from flow_tracker.workflows.definitions import (
    WorkflowDefinition,
    ensure_recorded,
    stored_versions,
)
from flow_tracker.workflows.engine import as_json, cannot_send, send, step_job_id, warn_if_large
from flow_tracker.workflows.status import WorkflowRun

_log = logging.getLogger("flow_tracker.workflows")

TAGS_LIMIT = 20
TAG_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
TAG_VALUE_LIMIT = 255
KEY_LIMIT = 255
WHO_LIMIT = 100
REASON_LIMIT = 500


class StartedRun(WorkflowRun):
    """A run a start returned: the new one, or the one its idempotency key started before."""

    def __init__(
        self,
        run_id: uuid.UUID,
        name: str,
        *,
        namespace: str,
        version: str,
        created: bool,
        delivery: Delivery,
        queue: str = "",
        first_statuses: dict[str, str] | None = None,
    ) -> None:
        super().__init__(run_id, name)
        self.namespace = namespace
        self.version = version
        self.queue = queue
        self.created = created
        """False: the idempotency key had started this run before; nothing new was started."""
        self.delivery = delivery
        """Its first steps: ``sent``, or ``waiting for a worker of <queue>`` (in the outbox)."""
        self.first_statuses = first_statuses
        """A new run's steps as it was stored (queued, pending, resolved); None for an old run."""


@dataclass(frozen=True)
class _Plan:
    """What a run is made of, from a declaration or a stored definition."""

    namespace: str
    name: str
    version: str
    queue: str
    module: str | None
    dag: dict[str, Any]
    steps: list[tuple[str, list[str], str]]
    """Each step's name, parents and queue name, in declaration (topological) order."""


def _from_declared(wf: Workflow) -> _Plan:
    steps = [(s.name, list(s.depends_on), s.queue_name) for s in wf.steps.values()]
    return _Plan(wf.namespace, wf.name, wf.version, wf.queue, wf.module, wf.snapshot(), steps)


def _from_stored(found: WorkflowDefinition) -> _Plan:
    """The plan of a stored definition, its DAG checked: a row may have been edited by hand."""
    damaged = f"the stored definition of {found.ref} version {found.version!r} is damaged"
    steps: list[tuple[str, list[str], str]] = []
    seen: set[str] = set()
    for raw in found.steps:
        name, parents = raw.get("name"), raw.get("depends_on") or []
        queue_name = raw.get("queue_name") or found.queue_name
        if (
            not isinstance(name, str)
            or name in seen
            or not isinstance(parents, list)
            or not all(isinstance(p, str) and p in seen for p in parents)
            or not isinstance(queue_name, str)
        ):
            raise UsageError(f"{damaged}: step {name!r}")
        seen.add(name)
        steps.append((name, list(parents), queue_name))
    dag = {"name": found.name, "queue": found.queue, "steps": found.steps}
    return _Plan(found.namespace, found.name, found.version, found.queue, found.module, dag, steps)


def split_ref(workflow: str) -> tuple[str, str]:
    """``("payments", "process_order")`` from ``"payments/process_order"``.

    A bare name is in the ``default`` namespace.
    """
    if not isinstance(workflow, str) or not workflow:
        raise UsageError(f"name a workflow as 'namespace/name' or 'name', not {workflow!r}")
    namespace, slash, name = workflow.partition("/")
    return (namespace, name) if slash else (DEFAULT_NAMESPACE, workflow)


def resolve(
    workflow: str, version: str | None, store: Store
) -> tuple[Workflow | None, WorkflowDefinition | None]:
    """The declaration here, else the stored definition, a start of ``workflow`` uses.

    Raises:
        NotFoundError: no such workflow, or no such version of it (the message
            lists the versions there are).
    """
    namespace, name = split_ref(workflow)
    if version is not None and not isinstance(version, str):
        raise UsageError(f"a version is text, not {version!r}")
    here = find_version(namespace, name, version)
    if here is None and "/" in workflow:
        # A bare name of the default namespace may hold a "/" of its own.
        here = find_version(DEFAULT_NAMESPACE, workflow, version)
    if here is not None:
        return here, None
    versions = stored_versions(store, namespace, name)
    if not versions and "/" in workflow:
        versions = stored_versions(store, DEFAULT_NAMESPACE, workflow)
        if versions:
            namespace, name = DEFAULT_NAMESPACE, workflow
    if not versions:
        raise NotFoundError(
            f"no workflow {namespace}/{name}: none is declared in this process or recorded "
            "by one (a process records a workflow when it starts a run of it or installs "
            "its queue's integration); see `flow-tracker workflows definitions`"
        )
    if version is None:
        return None, versions[0]
    for found in versions:
        if found.version == version:
            return None, found
    raise NotFoundError(
        f"workflow {namespace}/{name} has no version {version!r}; its versions: "
        + ", ".join(repr(d.version) for d in versions)
    )


def start_workflow(
    workflow: str,
    context: Mapping[str, Any] | None = None,
    *,
    version: str | None = None,
    idempotency_key: str | None = None,
    skip: Iterable[str] | None = None,
    tags: Mapping[str, str] | None = None,
    initiator: str | None = None,
    source: str | None = None,
    reason: str | None = None,
    store: Store | None = None,
) -> StartedRun:
    """Start a run of a declared or recorded workflow; returns at once.

    Every start is kept in the audit log (``workflows:start``: the workflow, its
    version, key, tags, skipped steps and reason; never the context), committed
    with the new run; a start that fails is kept as failed.

    Args:
        workflow: ``"namespace/name"``, or a bare name in the ``default`` namespace.
        context: the run's input, a JSON object passed to every step.
        version: the version to start; None: the newest declared in this process,
            else the newest recorded.
        idempotency_key: the same key for the same workflow returns the run it
            started (``.created`` is False), decided by the database.
        skip: steps that count as resolved with result None.
        tags: up to 20 ``str -> str`` labels to find the run by (keys of letters,
            digits, ``_ . -``; values of up to 255 characters).
        initiator: who asked (default: the acting principal's name, the OS user in a
            script or the CLI); kept in the run's history.
        source: the system that asked (``admin-api``); kept in the run's history.
        reason: why; kept in the run's history (secrets in it are cut out).
        store: the database (default: the configured one; the dashboard's own).

    Returns:
        A :class:`StartedRun` (a :class:`WorkflowRun`): ``.created`` and
        ``.delivery`` (its first steps ``sent``, or ``waiting for a worker of <queue>``).

    Raises:
        NotFoundError: no such workflow or version.
        UsageError: a context that is not a JSON object, a step to skip the
            workflow does not have, bad tags or key.
        DatabaseUnavailableError: the run could not be stored.
    """
    return _start_named(
        workflow,
        context,
        version=version,
        idempotency_key=idempotency_key,
        skip=skip,
        tags=tags,
        initiator=initiator,
        source=source,
        reason=reason,
        store=store,
        audited=True,
    )


def _asked(
    workflow: str,
    version: str | None,
    idempotency_key: str | None,
    skip: Iterable[str] | None,
    tags: Mapping[str, str] | None,
    initiator: str | None,
    source: str | None,
    reason: str | None,
) -> dict[str, Any]:
    """A start's parameters as its audit row keeps them: never its context.

    Tags are labels to find the run by (shown with it to every role), not its data.
    """
    asked: dict[str, Any] = {"workflow": workflow}
    for key, value in (
        ("version", version),
        ("idempotency", idempotency_key),
        ("skip", None if skip is None else [skip] if isinstance(skip, str) else skip),
        ("tags", tags),
        ("initiator", initiator),
        ("source", source),
        ("reason", reason),
    ):
        if value is not None:
            asked[key] = value
    return asked


def _acting_for_someone() -> bool:
    """True when a person asked (the dashboard, the API, the CLI), not the app's own code.

    ``Workflow.run`` in the app's code is its ordinary traffic — thousands of
    runs an hour — and is audited only when someone acts through it.
    """
    return current_actor().via != "library"


def _failures_audited(
    store: Store, asked: dict[str, Any], audited: bool
) -> contextlib.AbstractContextManager[None]:
    """Record a failed start's row when ``audited`` (see :func:`audit.failures_recorded`)."""
    if not audited:
        return contextlib.nullcontext()
    return audit.failures_recorded(
        store, action="workflows:start", target=asked["workflow"], detail=asked
    )


def _start_named(
    workflow: str,
    context: Mapping[str, Any] | None,
    *,
    version: str | None,
    idempotency_key: str | None,
    skip: Iterable[str] | None,
    tags: Mapping[str, str] | None,
    initiator: str | None,
    source: str | None,
    reason: str | None,
    store: Store | None,
    audited: bool,
) -> StartedRun:
    chosen = store or workflow_store()
    asked = _asked(str(workflow), version, idempotency_key, skip, tags, initiator, source, reason)
    with _failures_audited(chosen, asked, audited):
        chosen.ensure_schema()  # a dashboard's store, on a database nothing was recorded in yet
        here, found = resolve(workflow, version, chosen)
        if here is not None:
            ensure_recorded(here, chosen)
            plan = _from_declared(here)
        elif found is not None:
            plan = _from_stored(found)
        else:  # resolve returns one of the two, or raises
            raise NotFoundError(f"no workflow {workflow}")
        return _start(
            plan,
            context,
            store=chosen,
            idempotency_key=idempotency_key,
            skip=skip,
            tags=tags,
            initiator=initiator,
            source=source,
            reason=reason,
            audited=audited,
        )


def start_declared(
    wf: Workflow,
    context: Mapping[str, Any] | None,
    *,
    version: str | None = None,
    idempotency_key: str | None = None,
    skip: Iterable[str] | None = None,
    tags: Mapping[str, str] | None = None,
    initiator: str | None = None,
    source: str | None = None,
    reason: str | None = None,
) -> StartedRun:
    """What :meth:`Workflow.run` does: start this declaration (or another ``version`` of it).

    Audited as :func:`start_workflow` is only when someone acts through it (see
    :func:`_acting_for_someone`): the app's own runs are its traffic, not actions.
    """
    audited = _acting_for_someone()
    if version is not None and version != wf.version:
        return _start_named(
            f"{wf.namespace}/{wf.name}",
            context,
            version=version,
            idempotency_key=idempotency_key,
            skip=skip,
            tags=tags,
            initiator=initiator,
            source=source,
            reason=reason,
            store=None,
            audited=audited,
        )
    if not wf.steps:
        raise UsageError(f"workflow {wf.name!r} has no steps")
    store = workflow_store()
    asked = _asked(
        f"{wf.namespace}/{wf.name}", version, idempotency_key, skip, tags, initiator, source, reason
    )
    with _failures_audited(store, asked, audited):
        ensure_recorded(wf, store)
        return _start(
            _from_declared(wf),
            context,
            store=store,
            idempotency_key=idempotency_key,
            skip=skip,
            tags=tags,
            initiator=initiator,
            source=source,
            reason=reason,
            audited=audited,
        )


def _start(
    plan: _Plan,
    context: Mapping[str, Any] | None,
    *,
    store: Store,
    idempotency_key: str | None,
    skip: Iterable[str] | None,
    tags: Mapping[str, str] | None,
    initiator: str | None,
    source: str | None,
    reason: str | None,
    audited: bool = False,
) -> StartedRun:
    if not plan.steps:
        raise UsageError(f"workflow {plan.name!r} has no steps")
    if context is None:
        context = {}
    if not isinstance(context, Mapping):
        raise UsageError(f"a run's context is a dict (a JSON object), not {type(context).__name__}")
    settings = config.current()
    stored_context = as_json(
        dict(context), f"the context of a {plan.name} run", settings.max_context_bytes
    )
    skipped = checked_skip(skip, plan)
    checked_tags = check_tags(tags)
    key = _checked_text(idempotency_key, "an idempotency key", KEY_LIMIT)
    warn_if_large(stored_context, plan.name, settings.context_warning_bytes)
    # Without the queue's integration here (or, for the in-process pool, the
    # declaration), the first steps wait in the outbox, stored with the run.
    hold = cannot_send(plan.queue, plan.name)
    run_id = new_id()
    children: dict[str, list[str]] = {name: [] for name, _p, _q in plan.steps}
    for name, parents, _q in plan.steps:
        for parent in parents:
            children[parent].append(name)
    steps = []
    for name, parents, queue_name in plan.steps:
        job_id = step_job_id(run_id, name)
        steps.append(
            {
                "name": name,
                "parents": parents,
                "children": children[name],
                "job_id": job_id,
                "process_id": process_id_for(plan.queue, job_id),
                "queue_name": queue_name,
            }
        )
    new = stored.NewRun(
        run_id=run_id,
        namespace=plan.namespace,
        name=plan.name,
        version=plan.version,
        queue=plan.queue,
        module=plan.module,
        dag=plan.dag,
        context=stored_context,
        steps=steps,
        skip=skipped,
        tags=checked_tags,
        idempotency_key=key,
        history=history_line(plan, len(steps), skipped, initiator, source, reason),
    )
    done = _asked(
        f"{plan.namespace}/{plan.name}",
        plan.version,
        key,
        sorted(skipped) or None,
        checked_tags,
        initiator,
        source,
        reason,
    )
    hook = (
        audit.on_change(action="workflows:start", target=str(run_id), detail=done)
        if audited
        else None
    )
    try:
        created = stored.create(store, new, hold=hold, audit=hook)
    except (DBAPIError, SQLAlchemyError) as exc:
        if not is_transient(exc):
            raise
        raise unavailable(exc, f"starting a {plan.name} run") from exc
    if audited and not created.created:
        # Nothing was stored: the key had started this run. Still an action someone took.
        audit.record(
            store,
            action="workflows:start",
            target=str(created.run_id),
            outcome=audit.ALLOWED,
            detail={**done, "created": False},
        )
    delivery = NOTHING_SENT
    if created.created:
        announce.run_started(run_id, plan.name, plan.queue, len(steps))
        if created.run_status is not None:
            announce.run_ended(store, run_id, created.run_status)
        elif created.held:
            delivery = Delivery(waiting=(plan.queue,))
            if plan.queue != "threads" and _first_hold(plan):
                _log.warning(
                    "workflow %s runs on %s, whose integration is not installed in this "
                    "process: its first steps wait for a worker of %s "
                    "(flow_tracker.integrations.%s.install(...) sends them from here)",
                    plan.name,
                    plan.queue,
                    plan.queue,
                    plan.queue,
                )
        else:
            delivery = send(created.dispatches)
    first = None
    if created.created:
        queued = {d.step for d in created.dispatches}
        first = {
            name: StepState.RESOLVED.value
            if name in skipped
            else StepState.QUEUED.value
            if name in queued
            else StepState.PENDING.value
            for name, _p, _q in plan.steps
        }
    return StartedRun(
        created.run_id,
        plan.name,
        namespace=plan.namespace,
        version=plan.version,
        created=created.created,
        delivery=delivery,
        queue=plan.queue,
        first_statuses=first,
    )


_HELD_WARNED: set[tuple[str, str, str]] = set()


def _first_hold(plan: _Plan) -> bool:
    """True the first time this process holds a start of ``plan``: it says why once, not per run.

    A dashboard or a CLI holds every start (that is its job); a line per start
    would bury everything else in its log.
    """
    key = (plan.namespace, plan.name, plan.queue)
    if key in _HELD_WARNED:
        return False
    _HELD_WARNED.add(key)
    return True


def checked_skip(skip: Iterable[str] | None, plan: _Plan) -> frozenset[str]:
    """The steps to skip, each a step of the workflow; else a UsageError listing its steps."""
    if skip is None:
        return frozenset()
    names = [skip] if isinstance(skip, str) else skip
    try:
        chosen = list(names)
    except TypeError:
        raise UsageError(f"skip takes a list of step names, not {skip!r}") from None
    known = [name for name, _p, _q in plan.steps]
    unknown = [s for s in chosen if not isinstance(s, str) or s not in known]
    if unknown:
        raise UsageError(
            f"workflow {plan.namespace}/{plan.name} version {plan.version!r} has no step "
            f"{', '.join(repr(u)[:80] for u in unknown[:5])} to skip; its steps: {', '.join(known)}"
        )
    return frozenset(chosen)


def _bad_text(value: str) -> str | None:
    """Why ``value`` cannot be stored as a short label, or None."""
    for ch in value:
        kind = unicodedata.category(ch)
        if kind == "Cs":
            return "is not valid Unicode text (a lone surrogate)"
        if kind == "Cc":
            return f"has a control character ({ch!r})"
    return None


def _checked_text(value: object, what: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise UsageError(
            f"{what} is a non-empty string of at most {limit} characters, not {str(value)[:80]!r}"
        )
    bad = _bad_text(value)
    if bad:
        raise UsageError(f"{what} {bad}: {value[:80]!r}")
    return value


def check_tag(key: object, value: object) -> tuple[str, str]:
    """One tag, checked: a key of letters, digits, ``_ . -``; a value of up to 255 characters.

    Raises:
        UsageError: why the tag cannot be stored (or filtered by).
    """
    if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
        raise UsageError(
            "a tag key is 1 to 64 letters, digits, '_', '.' or '-', not " + repr(str(key)[:80])
        )
    if value is None:
        raise UsageError(f"tag {key!r} has no value")
    return key, str(_checked_text(value, f"the value of tag {key!r}", TAG_VALUE_LIMIT))


def check_tags(tags: Mapping[str, str] | None) -> dict[str, str] | None:
    """The run's tags, checked (see :func:`check_tag`); None for none."""
    if tags is None:
        return None
    if not isinstance(tags, Mapping):
        raise UsageError(f"tags are a dict of strings, not {type(tags).__name__}")
    if len(tags) > TAGS_LIMIT:
        raise UsageError(f"a run has at most {TAGS_LIMIT} tags, not {len(tags)}")
    return dict(check_tag(k, v) for k, v in tags.items()) or None


def parse_tag_filter(text: str, separator: str) -> tuple[str, str]:
    """``("customer", "c-42")`` from ``"customer:c-42"`` (the API) or ``"customer=c-42"`` (CLI).

    Raises:
        UsageError: no separator, or a key or value no tag can have.
    """
    key, sep, value = text.partition(separator)
    if not sep:
        raise UsageError(f"a tag filter is key{separator}value, not {text[:80]!r}")
    return check_tag(key, value)


def who(by: str | None) -> str:
    """Who an action is kept as in the run's history: ``by``, else the acting actor.

    The actor is whoever the dashboard let in (the principal's name, never a
    header anyone could send), the CLI's OS user, or the library's.
    """
    if by:
        return str(by)[:100]
    return current_actor().name[:100]


def history_line(
    plan: _Plan,
    steps: int,
    skipped: frozenset[str],
    initiator: str | None,
    source: str | None,
    reason: str | None,
) -> str:
    """``started: 4 steps, version 2, by alice via admin-api: customer asked again``.

    Anyone's text: secrets cut out, NUL and lone surrogates escaped, cut to fit.
    """
    text = f"started: {steps} steps, version {plan.version}, by {who(initiator)[:WHO_LIMIT]}"
    if source:
        text += f" via {str(source)[:WHO_LIMIT]}"
    if reason:
        text += f": {redact_text(str(reason)[:REASON_LIMIT])}"
    if skipped:
        text += f" (skipped: {', '.join(sorted(skipped))})"
    return clean_text(text)[: REASON_LIMIT * 2]
