"""Make the README's screenshots again, from the demo, in a headless Chromium.

Run it after changing a page::

    .venv/bin/python docs/screenshots/make.py

It records the demo (``flow-tracker demo``'s processes, workflow runs and week
of history) into a SQLite file of its own, serves the dashboard on a free local
port and saves every page the README shows, as PNG files beside this script.
Needs the dev extras (Playwright) and Debian's Chromium (``apt-get install
chromium``; ``FLOW_TRACKER_CHROMIUM`` points elsewhere); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


def chromium() -> str:
    """Debian's Chromium, or the one ``FLOW_TRACKER_CHROMIUM`` names."""
    found = os.environ.get("FLOW_TRACKER_CHROMIUM") or shutil.which("chromium")
    if not found or not os.path.exists(found):
        sys.exit("Chromium not found: apt-get install chromium (or set FLOW_TRACKER_CHROMIUM)")
    return found


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free local port for the block; yield its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def pages(database_url: str) -> list[tuple[str, str]]:
    """(file name, path) of every screenshot, found in the demo's data."""
    import flow_tracker

    ids: dict[str, Any] = {}
    for process in flow_tracker.list_processes(limit=100):  # newest first: the demo's own
        ids.setdefault(process.name, process.id)
    runs = {run["status"]: run["id"] for run in flow_tracker.workflows.list_workflows(limit=10)}
    return [
        ("overview", "/?window=7d"),
        ("processes", "/processes"),
        ("process-detail", f"/processes/{ids['nightly_import']}"),
        ("process-failed", f"/processes/{ids['PaymentWebhook']}"),
        ("process-running", f"/processes/{ids['LongRunningSync']}"),
        ("cleanup", "/cleanup?days=3"),
        ("health", "/health"),
        ("workflows", "/workflows"),
        ("workflow-run", f"/workflows/{runs['failed']}"),
        ("workflow-analytics", "/workflows/analytics?window=7d"),
    ]


def photograph(database_url: str, out: Path) -> list[Path]:
    """Serve the dashboard on ``database_url`` and save each page of :func:`pages` in ``out``."""
    from playwright.sync_api import sync_playwright

    from flow_tracker.web import create_app

    app = create_app(database_url, refresh_seconds=3600)
    saved: list[Path] = []
    problems: list[str] = []
    with served(app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "console",
            lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None,
        )
        for name, path in pages(database_url):
            response = page.goto(base + path)
            if response is None or response.status != 200:
                problems.append(f"{path}: {response.status if response else 'no answer'}")
                continue
            target = out / f"{name}.png"
            page.screenshot(path=str(target), full_page=True)
            saved.append(target)
        browser.close()
    if problems:
        raise RuntimeError("the pages did not load cleanly:\n" + "\n".join(problems))
    return saved


def main() -> None:
    """Record the demo into a file of its own, then photograph every page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="Folder for the PNG files.")
    options = parser.parse_args()

    from flow_tracker import runtime
    from flow_tracker.cli.demo import run_demo

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'demo.db'}"
        run_demo(url, echo=lambda _line: None)
        runtime.flush()
        for path in photograph(url, options.out):
            print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
        runtime.shutdown()


if __name__ == "__main__":
    main()
