"""Store records of ordinary ``logging`` calls made inside a tracked process.

Opt in once at start-up::

    from flow_tracker.integrations import logging as ft_logging
    ft_logging.install()                 # root logger, INFO and above (lowers
                                         # the root logger's level to INFO)

Each record emitted while a process is current becomes a log entry of the
innermost current flow, with the logger's name (and the formatted exception,
if any) in its data. Records of flow-tracker's own loggers (``flow_tracker``,
where tracker logs are mirrored, and ``flow_tracker.internal``) are ignored,
so mirroring and this handler together never loop.
"""

from __future__ import annotations

import logging
import threading

from flow_tracker.recording import current_flow
from flow_tracker.tracker import Flow, Tracker

_OWN_LOGGERS = ("flow_tracker",)
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)
_installed: dict[int, FlowTrackerHandler] = {}
_install_lock = threading.Lock()
_lowered: dict[int, int] = {}  # loggers whose level install() lowered: their level before


class FlowTrackerHandler(logging.Handler):
    """A logging handler that writes records to the current flow or process."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._busy = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        """Store ``record`` on the current flow; outside any process do nothing."""
        name = record.name
        if name in _OWN_LOGGERS or name.startswith("flow_tracker."):
            return
        node = current_flow()
        if not isinstance(node, (Flow, Tracker)) or getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            data: dict[str, object] = {"logger": name}
            if record.exc_info and record.exc_info[0] is not None:
                data["exception"] = logging.Formatter().formatException(record.exc_info)
            extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
            if extra:
                data["extra"] = extra
            node.log(record.getMessage(), record.levelno, data)  # type: ignore[arg-type]
        except Exception:
            self.handleError(record)
        finally:
            self._busy.on = False


def install(level: int = logging.INFO, logger: logging.Logger | None = None) -> FlowTrackerHandler:
    """Attach a :class:`FlowTrackerHandler` to ``logger`` (the root logger by default).

    A logger makes no record below its own level, whatever its handlers want:
    the root logger starts at WARNING, so ``logger.info(...)`` would never reach
    the handler. The logger's level is therefore lowered to ``level`` when it is
    higher (and put back by :func:`uninstall`). Your other handlers keep their
    own levels: give a console handler ``setLevel(logging.WARNING)`` if it should
    not start printing INFO records.

    Calling it again for the same logger returns the handler already there.
    """
    target = logger or logging.getLogger()
    with _install_lock:
        handler = _installed.get(id(target))
        if handler is None:
            handler = FlowTrackerHandler(level)
            target.addHandler(handler)
            _installed[id(target)] = handler
            if target.getEffectiveLevel() > level:
                _lowered[id(target)] = target.level
                target.setLevel(level)
        return handler


def uninstall(logger: logging.Logger | None = None) -> None:
    """Remove the handler :func:`install` attached to ``logger``."""
    target = logger or logging.getLogger()
    with _install_lock:
        handler = _installed.pop(id(target), None)
        if handler is not None:
            target.removeHandler(handler)
        if id(target) in _lowered:
            target.setLevel(_lowered.pop(id(target)))
