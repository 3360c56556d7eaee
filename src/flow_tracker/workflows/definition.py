"""Declaring a workflow: its steps, their parents and retry rules, checked as they are declared.

A workflow is a DAG of steps. Each step names its parents (``depends_on``), which
must be declared before it: that is how decorators read top to bottom, it makes
every declaration order a topological one, and it makes a cycle impossible
except a step naming itself, which is refused. Every misuse is a
:class:`~flow_tracker.errors.UsageError` at the line that declares it, never a
run that hangs later.

Workflows are found by name (:func:`find`): a worker imports the module that
declares them, as it imports the module that declares its tasks.
"""

from __future__ import annotations

import inspect
import random
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from flow_tracker.errors import UsageError

if TYPE_CHECKING:
    from flow_tracker.workflows.status import WorkflowRun

F = TypeVar("F", bound=Callable[..., Any])
QUEUES = ("threads", "celery", "rq", "dramatiq")
# Each system's own default queue, where steps go unless queue_name says otherwise.
DEFAULT_QUEUE_NAMES = {
    "threads": "threads",
    "celery": "celery",
    "rq": "default",
    "dramatiq": "default",
}
NAME_LIMIT = 120
# A queue name is stored in a column of 255 characters, on the step and its process.
QUEUE_NAME_LIMIT = 255
CONTEXT_PARAMETER = "context"

_WORKFLOWS: dict[str, Workflow] = {}
# Every version declared here, by (namespace, name, version): a worker runs a step with
# the functions of the version its run was started with (see find_version).
_VERSIONS: dict[tuple[str, str, str], Workflow] = {}
DEFAULT_NAMESPACE = "default"
DEFAULT_VERSION = "1"
# A namespace or version is part of "namespace/name" and of URLs: no "/" in either.
NAMESPACE_LIMIT = 120
VERSION_LIMIT = 64
# Queues the declared steps use, per queue system, and how an installed integration
# declares one (a Dramatiq worker consumes only the queues declared on its broker).
_QUEUES_USED: dict[str, set[str]] = {}
_QUEUE_DECLARERS: dict[str, Callable[[str], None]] = {}
# Which workflow and step a declared function is, so depends_on may name functions.
_STEP_OF: dict[int, tuple[str, str]] = {}


@dataclass(frozen=True)
class StepSpec:
    """One step as declared: its function, parents and retry rules."""

    name: str
    fn: Callable[..., Any]
    depends_on: tuple[str, ...]
    retries: int
    backoff: float
    backoff_factor: float
    backoff_max: float
    jitter: float
    retry_on: tuple[type[BaseException], ...]
    queue_name: str
    timeout: float | None = None
    """Seconds an attempt may run before it fails with StepTimeout; None: no limit."""
    children: list[str] = field(default_factory=list, compare=False)

    def delay_before(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        ``min(backoff_max, backoff * backoff_factor ** (retry - 1))``, spread by
        ±``jitter`` (a fraction of it), never negative.
        """
        base = min(self.backoff_max, self.backoff * self.backoff_factor ** max(0, retry - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, base * (1.0 + spread))

    def snapshot(self) -> dict[str, Any]:
        """The step as stored with each run (drawn without importing user code)."""
        return {
            "name": self.name,
            "depends_on": list(self.depends_on),
            "retries": self.retries,
            "backoff": self.backoff,
            "backoff_factor": self.backoff_factor,
            "backoff_max": self.backoff_max,
            "jitter": self.jitter,
            "retry_on": [_class_name(cls) for cls in self.retry_on],
            "queue_name": self.queue_name,
            "timeout": self.timeout,
        }


def _class_name(cls: type[BaseException]) -> str:
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def checked_name(value: object, what: str, limit: int = NAME_LIMIT) -> str:
    """``value`` if it can name a workflow, step or queue; else a :class:`UsageError`.

    A name is text: not empty, at most ``limit`` characters, no control
    characters (a NUL cannot be stored by PostgreSQL; a newline breaks every list
    and diagram it appears in) and no lone surrogates (not UTF-8, so not storable).

    Args:
        value: the name given.
        what: how to call it in the error ("a step name").
        limit: the most characters it may have.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        shown = value if not isinstance(value, str) else value[:80]
        raise UsageError(
            f"{what} is a non-empty string of at most {limit} characters, not {shown!r}"
        )
    bad = next((ch for ch in value if unicodedata.category(ch) in ("Cc", "Cs")), None)
    if bad is not None and unicodedata.category(bad) == "Cs":
        raise UsageError(f"{what} is not valid Unicode text (a lone surrogate): {value!r}")
    if bad is not None:
        raise UsageError(f"{what} has a control character ({bad!r}): {value!r}")
    return value


def _number(option: str, value: object, *, minimum: float, step: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise UsageError(f"step {step!r}: {option} must be a number >= {minimum:g}, not {value!r}")
    if value != value or value == float("inf"):
        raise UsageError(f"step {step!r}: {option} must be finite, not {value!r}")
    return float(value)


class Workflow:
    """A named DAG of steps; declare steps with :meth:`step`, start runs with :meth:`run`."""

    def __init__(
        self,
        name: str,
        queue: str = "threads",
        queue_name: str | None = None,
        module: str | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        version: str = DEFAULT_VERSION,
        description: str | None = None,
    ) -> None:
        checked_name(name, "a workflow name")
        _no_slash(checked_name(namespace, f"workflow {name!r}: namespace", NAMESPACE_LIMIT))
        _no_slash(checked_name(version, f"workflow {name!r}: version", VERSION_LIMIT))
        if description is not None and not isinstance(description, str):
            raise UsageError(f"workflow {name!r}: description is text, not {description!r}")
        self.namespace = namespace
        self.version = version
        self.description = description
        if queue not in QUEUES:
            raise UsageError(
                f"workflow {name!r}: queue must be one of {', '.join(QUEUES)}, not {queue!r}"
            )
        if queue_name is not None:
            checked_name(queue_name, f"workflow {name!r}: queue_name", QUEUE_NAME_LIMIT)
        self.name = name
        self.queue = queue
        self.queue_name = queue_name or DEFAULT_QUEUE_NAMES[queue]
        self.module = module
        """The module that declared the workflow (workers import it to find it)."""
        self.steps: dict[str, StepSpec] = {}

    def __repr__(self) -> str:
        return (
            f"<Workflow {self.namespace}/{self.name!r} version {self.version!r} on {self.queue}: "
            f"{len(self.steps)} steps>"
        )

    @overload
    def step(
        self,
        fn: F,
        *,
        name: str | None = None,
        depends_on: Iterable[str | Callable[..., Any]] = (),
        retries: int = 0,
        backoff: float = 1.0,
        backoff_factor: float = 2.0,
        backoff_max: float = 300.0,
        jitter: float = 0.1,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        queue_name: str | None = None,
        timeout: float | None = None,
    ) -> F: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        depends_on: Iterable[str | Callable[..., Any]] = (),
        retries: int = 0,
        backoff: float = 1.0,
        backoff_factor: float = 2.0,
        backoff_max: float = 300.0,
        jitter: float = 0.1,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        queue_name: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        depends_on: Iterable[str | Callable[..., Any]] = (),
        retries: int = 0,
        backoff: float = 1.0,
        backoff_factor: float = 2.0,
        backoff_max: float = 300.0,
        jitter: float = 0.1,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        queue_name: str | None = None,
        timeout: float | None = None,
    ) -> F | Callable[[F], F]:
        """Declare a step: ``@wf.step(...)`` above a function, or ``wf.step(name=...)(fn)``.

        The function is called with the run's context first, then each parent's
        result as a keyword named after the parent. It returns the step's result:
        any JSON value. An ``async def`` function runs to its end on an event loop
        of its own. The function is returned unchanged.

        Args:
            fn: the step's function, when used as ``@wf.step`` without parentheses.
            name: the step's name (default: the function's name).
            depends_on: the parents, by name or by their declared function; each
                must be a step of this workflow declared before this one.
            retries: retries after the first attempt.
            backoff: seconds before the first retry.
            backoff_factor: each further retry waits this many times longer.
            backoff_max: no retry waits longer than this.
            jitter: the delay is spread by ± this fraction of it.
            retry_on: the exceptions worth a retry; any other fails the step at once.
            queue_name: the queue of the queue system this step goes to.
            timeout: seconds an attempt may run (a positive number; None, the
                default: no limit). Past it the attempt fails with
                :class:`~flow_tracker.StepTimeout` and the step retries per its
                policy (``retry_on``'s default, ``Exception``, includes it), enforced
                by the queue's own time limit (Celery ``soft_time_limit``, RQ
                ``job_timeout``, Dramatiq ``time_limit``) or, on ``threads``, by the
                pool, which cannot stop a thread: it stores the timeout at the
                deadline and ignores what the function returns later.

        Raises:
            UsageError: a duplicate or unknown name, a cycle, a parent of another
                workflow, a parent missing from the signature, a bad option.
        """
        if fn is not None and not callable(fn):
            raise UsageError(f"workflow {self.name!r}: step() takes a function, not {fn!r}")

        def declare(func: F) -> F:
            self._declare(
                func,
                name=name,
                depends_on=depends_on,
                retries=retries,
                backoff=backoff,
                backoff_factor=backoff_factor,
                backoff_max=backoff_max,
                jitter=jitter,
                retry_on=retry_on,
                queue_name=queue_name,
                timeout=timeout,
            )
            return func

        return declare(fn) if fn is not None else declare

    def _declare(
        self,
        func: Callable[..., Any],
        *,
        name: str | None,
        depends_on: Iterable[str | Callable[..., Any]],
        retries: int,
        backoff: float,
        backoff_factor: float,
        backoff_max: float,
        jitter: float,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        queue_name: str | None,
        timeout: float | None = None,
    ) -> None:
        if not callable(func):
            raise UsageError(f"workflow {self.name!r}: a step is a function, not {func!r}")
        step = checked_name(
            name if name is not None else getattr(func, "__name__", None),
            f"workflow {self.name!r}: a step name",
        )
        if step in self.steps:
            raise UsageError(f"workflow {self.name!r}: a step named {step!r} is declared already")
        parents = tuple(self._parent_name(step, parent) for parent in _as_list(depends_on, step))
        if len(set(parents)) != len(parents):
            raise UsageError(f"step {step!r}: depends_on names a parent twice: {list(parents)}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise UsageError(f"step {step!r}: retries must be an integer >= 0, not {retries!r}")
        spec = StepSpec(
            name=step,
            fn=func,
            depends_on=parents,
            retries=retries,
            backoff=_number("backoff", backoff, minimum=0.0, step=step),
            backoff_factor=_number("backoff_factor", backoff_factor, minimum=1.0, step=step),
            backoff_max=_number("backoff_max", backoff_max, minimum=0.0, step=step),
            jitter=_number("jitter", jitter, minimum=0.0, step=step),
            retry_on=_exception_classes(retry_on, step),
            queue_name=self._queue_name(queue_name, step),
            timeout=_timeout(timeout, step),
        )
        if spec.jitter > 1.0:
            raise UsageError(f"step {step!r}: jitter is a fraction between 0 and 1, not {jitter!r}")
        _check_signature(func, step, parents)
        for parent in parents:
            self.steps[parent].children.append(step)
        self.steps[step] = spec
        _STEP_OF[id(func)] = (self.name, step)
        _queue_used(self.queue, spec.queue_name)

    def _parent_name(self, step: str, parent: str | Callable[..., Any]) -> str:
        if callable(parent) and not isinstance(parent, str):
            owner = _STEP_OF.get(id(parent))
            if owner is None:
                raise UsageError(f"step {step!r}: depends_on names {parent!r}, which is not a step")
            if owner[0] != self.name:
                raise UsageError(
                    f"step {step!r}: depends_on names step {owner[1]!r} of workflow {owner[0]!r}; "
                    f"a step depends only on steps of its own workflow ({self.name!r})"
                )
            parent = owner[1]
        if not isinstance(parent, str):
            raise UsageError(f"step {step!r}: depends_on takes step names, not {parent!r}")
        if parent == step:
            raise UsageError(
                f"step {step!r} depends on itself: a workflow is a DAG, without cycles"
            )
        if parent not in self.steps:
            elsewhere = [
                wf.name for wf in _WORKFLOWS.values() if wf is not self and parent in wf.steps
            ]
            where = f" (it is a step of workflow {elsewhere[0]!r})" if elsewhere else ""
            raise UsageError(
                f"step {step!r}: depends_on names {parent!r}, which is not a step of workflow "
                f"{self.name!r}{where}; declare a step before the steps that depend on it"
            )
        return parent

    def _queue_name(self, queue_name: str | None, step: str) -> str:
        if queue_name is None:
            return self.queue_name
        return checked_name(queue_name, f"step {step!r}: queue_name", QUEUE_NAME_LIMIT)

    def snapshot(self) -> dict[str, Any]:
        """The DAG as stored with each run: steps in declaration (topological) order."""
        return {
            "name": self.name,
            "queue": self.queue,
            "steps": [spec.snapshot() for spec in self.steps.values()],
        }

    def run(
        self,
        context: Mapping[str, Any] | None = None,
        *,
        version: str | None = None,
        idempotency_key: str | None = None,
        skip: Iterable[str] | None = None,
        tags: Mapping[str, str] | None = None,
        initiator: str | None = None,
        source: str | None = None,
        reason: str | None = None,
    ) -> WorkflowRun:
        """Start a run: stored before any step is enqueued; returns at once.

        The keywords are :func:`flow_tracker.start_workflow`'s.

        Args:
            context: the run's input, a JSON object passed to every step.
            version: another version of this workflow to start (default: this one).
            idempotency_key: a repeated key returns the run it started.
            skip: steps that count as resolved with result None.
            tags: a few ``str -> str`` labels to find the run by.
            initiator: who asked (kept in the run's history).
            source: the system that asked (kept in the run's history).
            reason: why (kept in the run's history).

        Raises:
            UsageError: no steps, a context that is not a JSON object, an unknown
                version or step to skip, bad tags.
            DatabaseUnavailableError: the run could not be stored.
        """
        from flow_tracker.workflows.starting import start_declared

        return start_declared(
            self,
            context,
            version=version,
            idempotency_key=idempotency_key,
            skip=skip,
            tags=tags,
            initiator=initiator,
            source=source,
            reason=reason,
        )


def _timeout(value: object, step: str) -> float | None:
    """The step's timeout in seconds: None (no limit) or a positive, finite number."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value < float("inf")  # NaN fails both comparisons
    ):
        raise UsageError(
            f"step {step!r}: timeout is a positive, finite number of seconds or None "
            f"(no limit), not {value!r}"
        )
    return float(value)


def _as_list(depends_on: Iterable[str | Callable[..., Any]], step: str) -> list[Any]:
    if isinstance(depends_on, str) or callable(depends_on):
        return [depends_on]
    try:
        return list(depends_on)
    except TypeError:
        raise UsageError(
            f"step {step!r}: depends_on takes a list of steps, not {depends_on!r}"
        ) from None


def _exception_classes(
    retry_on: type[BaseException] | tuple[type[BaseException], ...], step: str
) -> tuple[type[BaseException], ...]:
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise UsageError(f"step {step!r}: retry_on takes exception classes, not {cls!r}")
    return classes


def _check_signature(func: Callable[..., Any], step: str, parents: tuple[str, ...]) -> None:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # a builtin or C function: nothing to check
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        takes_all = True
    else:
        takes_all = False
    positional = [
        p
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if not positional and not any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()
    ):
        raise UsageError(
            f"step {step!r}: its function must take the run's context as first argument"
        )
    if takes_all:
        return
    accepted = {
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    missing = [parent for parent in parents if parent not in accepted]
    if missing:
        raise UsageError(
            f"step {step!r}: each parent's result arrives as a keyword named after it, but the "
            f"function takes no parameter {', '.join(repr(m) for m in missing)}"
        )
    first = positional[0].name if positional else None
    required = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name != first
        and p.name not in parents
    ]
    if required:
        raise UsageError(
            f"step {step!r}: parameter {required[0]!r} is neither the context nor a parent's result"
        )


def workflow(
    name: str,
    queue: str = "threads",
    *,
    namespace: str = DEFAULT_NAMESPACE,
    version: str = DEFAULT_VERSION,
    description: str | None = None,
    queue_name: str | None = None,
) -> Workflow:
    """Declare a workflow: a named DAG of steps that runs on ``queue``.

    Args:
        name: how runs are named and how workers find the workflow.
        queue: ``"threads"`` (an in-process pool, the default), ``"celery"``,
            ``"rq"`` or ``"dramatiq"``; the integration must be installed.
        namespace: a group of workflows (``"payments"``); started as
            ``"payments/process_order"``. No ``/`` in it.
        version: this declaration's version; several versions of one workflow
            may be declared side by side, and each run keeps the one it was
            started with. No ``/`` in it.
        description: a line for the definitions page and list.
        queue_name: the queue steps go to (default: the system's default queue).

    Declaring the same (namespace, name, version) again replaces the earlier one
    in this interpreter (a module reloaded). Nothing is stored at declaration:
    the definition is recorded on first use (a start, a worker's step, a queue's
    install; see :mod:`flow_tracker.workflows.definitions`).

    Raises:
        UsageError: a bad name, namespace or version, or an unknown queue.
    """
    declared = Workflow(
        name,
        queue,
        queue_name,
        _declaring_module(),
        namespace=namespace,
        version=version,
        description=description,
    )
    _VERSIONS[(namespace, name, version)] = declared
    newest = _WORKFLOWS.get(name)
    if newest is None or newest.namespace != namespace or not _older(version, newest.version):
        _WORKFLOWS[name] = declared
    return declared


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """How versions sort: dotted parts, numbers as numbers ("1.10" after "1.9").

    A part that is not a number sorts after the numbers, by its text.
    """
    parts = version.replace("-", ".").replace("+", ".").split(".")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _older(version: str, than: str) -> bool:
    return version_key(version) < version_key(than)


def _no_slash(value: str) -> str:
    if "/" in value:
        raise UsageError(f"a namespace or version has no '/' (it separates them): {value!r}")
    return value


def _declaring_module() -> str | None:
    """The module being imported that declares the workflow, maybe through a helper.

    The nearest module-level frame up the stack (a factory called at import time
    counts for the module that calls it); else the direct caller's module.
    """
    frame = sys._getframe(2)
    caller = frame.f_globals.get("__name__")
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            name = frame.f_globals.get("__name__")
            return name if isinstance(name, str) else None
        frame = frame.f_back  # type: ignore[assignment]
    return caller if isinstance(caller, str) else None


def _queue_used(system: str, queue_name: str) -> None:
    used = _QUEUES_USED.setdefault(system, set())
    if queue_name in used:
        return
    used.add(queue_name)
    declare = _QUEUE_DECLARERS.get(system)
    if declare is not None:
        declare(queue_name)


def on_queue_used(system: str, declare: Callable[[str], None]) -> None:
    """Call ``declare`` with every queue the steps of ``system`` use, declared or to come."""
    _QUEUE_DECLARERS[system] = declare
    for queue_name in sorted(_QUEUES_USED.get(system, ())):
        declare(queue_name)


def find(name: str) -> Workflow | None:
    """The workflow declared under ``name`` in this interpreter (its newest version), if any."""
    return _WORKFLOWS.get(name)


def find_version(namespace: str, name: str, version: str | None = None) -> Workflow | None:
    """The declaration of (namespace, name, version) here; ``version=None``: the newest one."""
    if version is not None:
        return _VERSIONS.get((namespace, name, version))
    candidates = [wf for (ns, n, _v), wf in _VERSIONS.items() if ns == namespace and n == name]
    return max(candidates, key=lambda wf: version_key(wf.version), default=None)


def declared() -> list[Workflow]:
    """Every workflow declared in this interpreter (the newest version of each name)."""
    return list(_WORKFLOWS.values())


def declared_versions() -> list[Workflow]:
    """Every version of every workflow declared in this interpreter."""
    return list(_VERSIONS.values())
