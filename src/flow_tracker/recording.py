"""The public recording functions: track, start, flow, log, current, bind.

:func:`track` and :func:`flow` return objects that work as ``with`` and
``async with`` blocks and as decorators of sync and async functions. They
never raise into user code except for misuse (an empty name, a bad category).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from flow_tracker import config, runtime
from flow_tracker.errors import Skipped
from flow_tracker.levels import LEVELS, resolve_level
from flow_tracker.nulls import NULL_FLOW, NULL_TRACKER, NullFlow, NullTracker
from flow_tracker.tracker import (
    CURRENT_NODE,
    Flow,
    Tracker,
    check_name,
    reset_current,
)

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
AnyTracker = Tracker | NullTracker
AnyFlow = Flow | NullFlow


class _Decorating:
    """Makes a block usable as a decorator of sync and async functions.

    Each call of the decorated function runs in a fresh copy of the block
    (:meth:`_fresh`), so calls in several threads or tasks never share state.
    """

    __slots__ = ()

    def _fresh(self) -> Any:
        raise NotImplementedError

    def __call__(self, func: F) -> F:
        """Decorate ``func``: every call runs inside a fresh copy of this block."""
        fresh = self._fresh
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with fresh():
                    return await func(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return func(*args, **kwargs)

        return cast(F, run)


class TrackContext(_Decorating):
    """What :func:`track` returns: a context manager (sync and async) and a decorator."""

    __slots__ = ("_category", "_metadata", "_name", "_stack")

    def __init__(self, name: str, category: str | None, metadata: Mapping[str, Any] | None):
        check_name(name, "process")
        self._name = name
        self._category = None if category is None else config.validate_category(category)
        self._metadata = metadata
        self._stack: list[tuple[AnyTracker, contextvars.Token[Any] | None]] = []

    def __enter__(self) -> AnyTracker:
        tracker = open_tracker(self._name, self._category, self._metadata)
        # A disabled tracker is current too, so that code inside can always call
        # flow_tracker.current().progress without checking for None.
        token = CURRENT_NODE.set(tracker) if tracker is NULL_TRACKER else None
        self._stack.append((tracker, token))
        return tracker

    def _pop(self) -> AnyTracker:
        tracker, token = self._stack.pop()
        if token is not None:
            reset_current(token, tracker)
        return tracker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        tracker = self._pop()
        if isinstance(tracker, Tracker):
            tracker.complete(exc)
        # A skipped critical section ends the process as skipped, and the block quietly.
        return isinstance(exc, Skipped)

    async def __aenter__(self) -> AnyTracker:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        tracker = self._pop()
        if isinstance(tracker, Tracker):
            tracker.complete(exc, wait=False)
            # Wait for the final state off the event loop, so other tasks go on.
            timeout = tracker._settings.completion_timeout
            if timeout > 0 and tracker._writer.healthy:
                await asyncio.get_running_loop().run_in_executor(
                    None, tracker._writer.flush, timeout
                )
        return isinstance(exc, Skipped)

    def _fresh(self) -> TrackContext:
        return TrackContext(self._name, self._category, self._metadata)


def open_tracker(
    name: str,
    category: str | None,
    metadata: Mapping[str, Any] | None,
    *,
    process_id: uuid.UUID | None = None,
    attempt: int = 1,
    extra: Mapping[str, Any] | None = None,
    durable: bool = False,
    copies: list[uuid.UUID] | None = None,
    started_at: float | None = None,
) -> AnyTracker:
    """Start a process and make it current; the null tracker when disabled or on failure.

    ``durable``: store the running row before returning; ``copies`` gets the id
    of a process requeued from this one, found in the same transaction;
    ``started_at``: its start, when another write stored it (see ``Tracker._begin``).
    """
    settings = config.current()
    if not settings.enabled:
        return NULL_TRACKER
    try:
        tracker = Tracker(
            name,
            category=category or settings.default_category,
            metadata=metadata,
            settings=settings,
            writer=runtime.sink(),
            process_id=process_id,
            attempt=attempt,
        )
        tracker._begin(CURRENT_NODE.get(), extra, durable, copies, started_at)
    except Exception as exc:
        runtime.report_internal_error(exc, "starting a process")
        return NULL_TRACKER
    return tracker


@overload
def track(name: F) -> F: ...
@overload
def track(
    name: str, category: str | None = None, metadata: Mapping[str, Any] | None = None
) -> TrackContext: ...
def track(
    name: str | F, category: str | None = None, metadata: Mapping[str, Any] | None = None
) -> TrackContext | F:
    """Track a process, as a ``with``/``async with`` block or as a decorator.

    ``with track("Name") as tracker:``, ``async with track(...)``, ``@track("name")``.

    Args:
        name: the process name (a bare ``@track`` uses the function's qualified name).
        category: jobs, services, api, other or any short ``[a-z0-9_-]`` word
            (default: the ``default_category`` setting).
        metadata: JSON-able facts about the run, redacted before storing.

    An exception leaving the block marks the process ``failed`` and goes on unchanged.
    A process started inside another records it as its parent.
    """
    if callable(name):
        return TrackContext(name.__qualname__, None, None)(name)
    return TrackContext(name, category, metadata)


def start(
    name: str, category: str | None = None, metadata: Mapping[str, Any] | None = None
) -> AnyTracker:
    """Start tracking a process without a block; end it with ``tracker.complete(error=None)``.

    The process is the current one of this context until it completes.
    """
    check_name(name, "process")
    checked = None if category is None else config.validate_category(category)
    return open_tracker(name, checked, metadata)


class FlowContext(_Decorating):
    """What :func:`flow` returns: a flow of the current process, as block or decorator."""

    __slots__ = ("_metadata", "_name", "_stack")

    def __init__(self, name: str, metadata: Mapping[str, Any] | None) -> None:
        self._name = name
        self._metadata = metadata
        self._stack: list[AnyFlow] = []

    def __enter__(self) -> AnyFlow:
        node = CURRENT_NODE.get()
        if node is None or node._tracker is None:
            self._stack.append(NULL_FLOW)
            return NULL_FLOW
        child: Flow = node.flow(self._name, self._metadata)
        self._stack.append(child)
        return child.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.pop().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> AnyFlow:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _fresh(self) -> FlowContext:
        return FlowContext(self._name, self._metadata)


def flow(name: str, metadata: Mapping[str, Any] | None = None) -> FlowContext:
    """A flow of the innermost current process or flow, as a block or a decorator.

    ``with flow("step"):`` or ``@flow("step")``.

    Outside any process it does nothing and the code runs as usual.
    """
    check_name(name, "flow")
    return FlowContext(name, metadata)


def current() -> Tracker | NullTracker | None:
    """The process (tracker) of the current context, or None outside any process."""
    node = CURRENT_NODE.get()
    if node is None:
        return None
    return cast("Tracker | NullTracker", node._tracker or node)


def current_flow() -> Flow | Tracker | NullFlow | None:
    """The innermost flow of the current context (the process itself outside any flow)."""
    return cast("Flow | Tracker | NullFlow | None", CURRENT_NODE.get())


def log(message: object, level: str = "info", data: object = None) -> None:
    """Log to the innermost current flow or process; outside any process only checks the level."""
    node = CURRENT_NODE.get()
    if node is None:
        if level not in LEVELS:
            resolve_level(level)
        return
    node.log(message, level, data)


def bind(func: Callable[..., R]) -> Callable[..., R]:
    """Return ``func`` bound to the current process and flow, to run in another thread.

    Threads do not inherit context variables::

        with flow_tracker.track("import"):
            pool.submit(flow_tracker.bind(load_file), path)   # logs land in "import"
    """
    context = contextvars.copy_context()

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> R:
        # A copy per call, so the same bound function may run in two threads at once.
        return context.copy().run(func, *args, **kwargs)

    return run


def bind_async(func: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Like :func:`bind` for coroutine functions run from another event loop or thread."""
    node = CURRENT_NODE.get()

    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> R:
        token = CURRENT_NODE.set(node)
        try:
            return await func(*args, **kwargs)
        finally:
            CURRENT_NODE.reset(token)

    return run
