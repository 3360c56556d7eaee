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

import ast
import importlib.util
import inspect
import random
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

from flow_tracker import job_systems
from flow_tracker.errors import UsageError
from flow_tracker.workflows.retry import RetryPolicy, for_step

if TYPE_CHECKING:
    from flow_tracker.workflows.status import WorkflowRun

F = TypeVar("F", bound=Callable[..., Any])
# The in-process pool: no queue module, no broker; its steps' queue is its name.
THREADS = "threads"
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
# Which workflow and step a declared function is, so depends_on may name functions.
_STEP_OF: dict[int, tuple[str, str]] = {}


@dataclass(frozen=True)
class StepSpec:
    """One step as declared: its function, parents and retry policy."""

    name: str
    fn: Callable[..., Any]
    depends_on: tuple[str, ...]
    retry: RetryPolicy
    """How the step retries: the one place that decides (see :class:`RetryPolicy`)."""
    queue_name: str
    timeout: float | None = None
    """Seconds an attempt may run before it fails with StepTimeout; None: no limit."""
    children: list[str] = field(default_factory=list, compare=False)

    # The policy's knobs, read where a step's were read before RetryPolicy.
    @property
    def retries(self) -> int:
        """Retries after the first attempt (the policy's)."""
        return self.retry.retries

    @property
    def backoff(self) -> float:
        """Seconds before the first retry (the policy's)."""
        return self.retry.backoff

    @property
    def backoff_factor(self) -> float:
        """How many times longer each further retry waits (the policy's)."""
        return self.retry.backoff_factor

    @property
    def backoff_max(self) -> float:
        """The longest wait before a retry (the policy's)."""
        return self.retry.backoff_max

    @property
    def jitter(self) -> float:
        """The ± fraction a delay is spread by (the policy's)."""
        return self.retry.jitter

    @property
    def retry_on(self) -> tuple[type[BaseException], ...]:
        """The exceptions worth a retry (the policy's)."""
        return self.retry.retry_on

    def delay_before(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        The policy's backoff: :meth:`RetryPolicy.delay`.
        """
        return self.retry.delay(retry, rng)

    def snapshot(self) -> dict[str, Any]:
        """The step as stored with each run (drawn without importing user code)."""
        return {
            "name": self.name,
            "depends_on": list(self.depends_on),
            **self.retry.snapshot(),
            "queue_name": self.queue_name,
            "timeout": self.timeout,
        }


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
        if queue_name is not None:
            checked_name(queue_name, f"workflow {name!r}: queue_name", QUEUE_NAME_LIMIT)
        self.name = name
        self.queue = queue
        # With queue_name given, a queue installed only in the workers (a team's own)
        # is fine here: its steps wait in the outbox for a worker of it.
        if queue_name and not (isinstance(queue, str) and queue.isidentifier()):
            raise UsageError(f"workflow {name!r}: queue must be a name, not {queue!r}")
        self.queue_name = queue_name or default_queue_name(name, queue)
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
        retry: RetryPolicy | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        backoff_factor: float | None = None,
        backoff_max: float | None = None,
        jitter: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
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
        retry: RetryPolicy | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        backoff_factor: float | None = None,
        backoff_max: float | None = None,
        jitter: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        queue_name: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]: ...

    def step(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        depends_on: Iterable[str | Callable[..., Any]] = (),
        retry: RetryPolicy | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        backoff_factor: float | None = None,
        backoff_max: float | None = None,
        jitter: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
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
            retry: how the step retries, as one :class:`RetryPolicy` (default:
                no retry); or give its knobs as the keywords below, not both.
            retries: retries after the first attempt (default 0).
            backoff: seconds before the first retry (default 1.0).
            backoff_factor: each further retry waits this many times longer (2.0).
            backoff_max: no retry waits longer than this (300.0).
            jitter: the delay is spread by ± this fraction of it (0.1).
            retry_on: the exceptions worth a retry; any other fails the step at
                once (default: every ``Exception``).
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
                retry=retry,
                knobs={
                    "retries": retries,
                    "backoff": backoff,
                    "backoff_factor": backoff_factor,
                    "backoff_max": backoff_max,
                    "jitter": jitter,
                    "retry_on": retry_on,
                },
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
        retry: RetryPolicy | None,
        knobs: dict[str, Any],
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
        spec = StepSpec(
            name=step,
            fn=func,
            depends_on=parents,
            retry=for_step(step, retry, knobs),
            queue_name=self._queue_name(queue_name, step),
            timeout=_timeout(timeout, step),
        )
        _check_signature(func, step, parents)
        for parent in parents:
            self.steps[parent].children.append(step)
        self.steps[step] = spec
        _STEP_OF[id(func)] = (self.name, step)
        job_systems.queue_used(self.queue, spec.queue_name)

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
        # The one import in workflows/ that goes up a layer, made when a run starts:
        # a declaration is the bottom layer (a worker imports it to find its steps),
        # and starting a run needs the engine above it.
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


def default_queue_name(workflow: str, queue: str) -> str:
    """The broker queue ``queue``'s steps go to when ``workflow`` names none.

    Asked of the queue's :class:`~flow_tracker.job_systems.JobSystem` when it is
    installed here; else of its module, found by name the way a plugin is
    (``flow_tracker.integrations.<queue>`` and its ``DEFAULT_QUEUE``), read from
    its source without running it: a script or a dashboard that declares a
    Celery workflow sends its runs where the workers listen, with no Celery
    installed. An unknown queue is refused here.
    """
    if queue == THREADS:
        return THREADS
    system = job_systems.get(queue) if isinstance(queue, str) else None
    if system is not None:
        return system.default_queue
    module_name = _queue_module(workflow, queue)
    default = _declared_default(module_name)
    if default is None:
        raise UsageError(
            f"workflow {workflow!r}: queue {queue!r} names its broker queue once installed"
            f" ({module_name}.install() here), or pass queue_name="
        )
    return default


def _queue_module(workflow: str, queue: object) -> str:
    """The module of ``queue`` (found, not imported); a clear error when there is none."""
    where = f"workflow {workflow!r}"
    if not isinstance(queue, str) or not queue.isidentifier():
        raise UsageError(f"{where}: queue must be the name of a queue module, not {queue!r}")
    module_name = f"flow_tracker.integrations.{queue}"
    if importlib.util.find_spec(module_name) is None:
        known = sorted({THREADS, *(s.name for s in job_systems.registered())})
        raise UsageError(
            f"{where}: no queue {queue!r} (no module {module_name}, none registered; a queue"
            f" of your own: pass queue_name=, or install it first); known here: {', '.join(known)}"
        )
    return module_name


def _declared_default(module_name: str) -> str | None:
    """``DEFAULT_QUEUE = "..."`` at the top of the module's source, if it says so."""
    spec = importlib.util.find_spec(module_name)
    loader = spec.loader if spec is not None else None
    get_source = getattr(loader, "get_source", None)
    try:
        source = get_source(module_name) if get_source is not None else None
        tree = ast.parse(source) if source else None
    except (ImportError, OSError, SyntaxError, ValueError):
        return None
    for node in tree.body if tree is not None else ():
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if (
            isinstance(target, ast.Name)
            and target.id == "DEFAULT_QUEUE"
            and isinstance(value, ast.Constant)
            and isinstance(value.value, str)
        ):
            return value.value
    return None


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
