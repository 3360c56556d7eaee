"""A real Chromium (Debian's, driven by Playwright) and a real HTTP server for browser tests."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.conftest import IN_CI

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]


def chromium_path() -> str | None:
    """Debian's Chromium (or FLOW_TRACKER_CHROMIUM), if installed."""
    candidate = os.environ.get("FLOW_TRACKER_CHROMIUM") or shutil.which("chromium")
    return candidate if candidate and os.path.exists(candidate) else None


def missing_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if chromium_path() is None:
        return "Chromium not found: apt-get install chromium (CI installs it)"
    return None


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` over HTTP on a free local port; yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


__all__ = ["CHROMIUM_FLAGS", "IN_CI", "chromium_path", "missing_reason", "serve"]
