"""Dashboard at scale: every page and API call over 1 M processes, 5 M flows, 5 M logs.

``python -m benchmarks dashboard [--quick] [--readme]``. Server time is what the
app's own ``Server-Timing`` header says (inside the ASGI app, database included,
network excluded), over repeated requests after one warm-up; the target is p95
≤ 100 ms for each route. Side by side in the same run: the naive queries a
dashboard without rollups would run (a p95 by name over 7 days straight from
the rows). Every run writes its tables to ``benchmarks/results/dashboard.md``;
``--readme`` also into docs/benchmarks.md (``<!-- benchmark:dashboard -->``).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from benchmarks.dashboard_data import ensure_dataset
from benchmarks.readme import publish
from flow_tracker.store import rollups

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DB_NAME = "flow_tracker_bench_dashboard"
TARGET_P95_MS = 100.0


def _database(processes: int) -> str | None:
    name = DB_NAME if processes == 1_000_000 else f"{DB_NAME}_{processes}"
    try:
        with psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=3) as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        return None
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _server_ms(response: object) -> float:
    header = response.headers["server-timing"]  # type: ignore[attr-defined]
    return float(header.split("dur=")[1])


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Site:
    """One dashboard under test: its database, a client of its app, the routes to time."""

    processes: int
    url: str
    client: Any
    routes: list[tuple[str, Callable[[], str]]]
    keeper_ms: list[float] = field(default_factory=list)
    build: dict[str, float] = field(default_factory=dict)

    @property
    def dsn(self) -> str:
        """The database's address for psycopg."""
        return self.url.replace("postgresql+psycopg://", "postgresql://")

    def time_route(self, make: Callable[[], str], repeats: int) -> list[float] | None:
        """Server ms of ``repeats`` requests after a warm-up; None if one was not a 200."""
        self.client.get(make())  # warm-up
        times = []
        for _ in range(repeats):
            response = self.client.get(make())
            if response.status_code != 200:
                print(f"  {make()}: HTTP {response.status_code}")
                return None
            times.append(_server_ms(response))
        return times


def open_site(processes: int) -> Site | None:
    """Build or reuse the data set of ``processes``, open the dashboard on it, warm it.

    The first overview starts the statistics keeper; on a data set never rolled
    up, its first build is waited for (and reported): routes are timed as a team
    sees them every day after.
    """
    url = _database(processes)
    if url is None:
        return None
    build = ensure_dataset(url, processes)
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

    from flow_tracker.web import create_app

    client = TestClient(create_app(url))
    site = Site(processes, url, client, [], build=build)
    with psycopg.connect(site.dsn) as conn:
        sample = conn.execute(
            "SELECT id::text, job_id FROM flow_tracker_processes TABLESAMPLE SYSTEM (1) LIMIT 200"
        ).fetchall()
        running = conn.execute(
            "SELECT id::text FROM flow_tracker_processes WHERE status = 'running' LIMIT 1"
        ).fetchone()
        rolled_before = conn.execute(
            "SELECT 1 FROM flow_tracker_state WHERE key = %s", (rollups.WATERMARK_KEY,)
        ).fetchone()
    rng = random.Random(5)

    started = time.perf_counter()
    first = client.get("/?window=30d")
    first_ms = (time.perf_counter() - started) * 1000
    print(f"  {processes:,}: first overview {first_ms:,.0f} ms, status {first.status_code}")
    keeper = client.app.state.dashboard.keeper  # type: ignore[attr-defined]
    newest_s, all_s = _wait_for_first_build(keeper, url, started)
    if not rolled_before and newest_s is not None:
        # Once after install; meanwhile pages read what is not rolled up yet from raw rows.
        print(
            f"  {processes:,}: first build of the rollups, in the background: the newest "
            f"day after {newest_s:.1f} s, every day after {all_s:.1f} s"
        )

    def after_refresh(path: str) -> str:
        # What happens once an hour: a refresh rewrites the rollups (a new version, so
        # every remembered sum is stale) and the keeper sums them again in the
        # background before the pages see the new version. Timed apart from the page.
        with psycopg.connect(site.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE flow_tracker_state SET updated_at = clock_timestamp() WHERE key = %s",
                (rollups.WATERMARK_KEY,),
            )
        t0 = time.perf_counter()
        keeper.tick()
        site.keeper_ms.append((time.perf_counter() - t0) * 1000)
        return path

    cursor = client.get("/api/processes").json()["next_cursor"]
    site.routes = [
        ("overview 1h", lambda: "/?window=1h"),
        ("overview 24h", lambda: "/?window=24h"),
        ("overview 7d", lambda: "/?window=7d"),
        ("overview 30d", lambda: "/?window=30d"),
        ("overview 24h, 1st after refresh", lambda: after_refresh("/?window=24h")),
        ("overview 30d, 1st after refresh", lambda: after_refresh("/?window=30d")),
        ("processes", lambda: "/processes"),
        ("processes page 2", lambda: f"/processes?cursor={cursor}"),
        ("processes oldest first", lambda: "/processes?order=oldest"),
        ("processes status=failed", lambda: "/processes?status=failed"),
        ("processes status=lost 24h", lambda: "/processes?status=lost&range=24h"),
        ("processes category", lambda: "/processes?category=reports"),
        ("processes name", lambda: "/processes?name=MonthlyReport"),
        ("processes metadata", lambda: f"/processes?meta=tenant=tenant-{rng.randrange(50)}"),
        ("processes metadata+status", lambda: "/processes?meta=region=ap&status=failed"),
        ("search common, 24h", lambda: "/processes?q=customer%201&range=24h"),
        ("search rare, 24h", lambda: f"/processes?q=order%20%23{rng.randrange(10**6)}&range=24h"),
        ("search name, any time", lambda: "/processes?q=Invoice"),
        ("process detail", lambda: f"/processes/{rng.choice(sample)[0]}"),
        ("process detail running", lambda: f"/processes/{running[0] if running else sample[0][0]}"),
        ("cleanup preview 7d", lambda: "/cleanup?days=7"),
        ("api list", lambda: "/api/processes?status=failed&limit=100"),
        ("api detail", lambda: f"/api/processes/{rng.choice(sample)[0]}"),
        ("api status by job id", lambda: f"/api/status/{rng.choice(sample)[1]}"),
        ("api stats 24h", lambda: "/api/stats?window=24h"),
        ("api stats 30d", lambda: "/api/stats?window=30d"),
    ]
    return site


def main(argv: list[str]) -> int:
    """Build or reuse the data set, time every route, print the table; 1 if a target is missed."""
    if "--scale" in argv:
        from benchmarks.dashboard_scale import main as scale_main

        return scale_main(argv)
    quick = "--quick" in argv
    processes = 100_000 if quick else 1_000_000
    repeats = 15 if quick else 40
    rows = f"{processes:,} processes, {5 * processes:,} flows, {5 * processes:,} logs"
    print(f"\n== dashboard: {rows} ==")
    warnings.simplefilter("ignore")
    sqlite_missed = _sqlite_search_budget(10_000 if quick else 100_000)
    site = open_site(processes)
    if site is None:
        print("  skipped: no PostgreSQL on 127.0.0.1:5432")
        return 1 if sqlite_missed else 0
    client, dsn, build, keeper_ms = site.client, site.dsn, site.build, site.keeper_ms
    head = f"{'route':<32} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    print(f"\n  {head}  target p95 <= {TARGET_P95_MS:.0f} ms")
    missed = []
    p95s: dict[str, float] = {}
    report = [
        f"Measured by `python -m benchmarks dashboard{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, PostgreSQL, {rows}; server time (`Server-Timing`), "
        f"{repeats} requests per route after a warm-up; target p95 ≤ {TARGET_P95_MS:.0f} ms.",
        "",
        "| route | p50 ms | p95 ms |",
        "|---|---:|---:|",
    ]
    for label, make in site.routes:
        times = site.time_route(make, repeats)
        if times is None:
            missed.append(label)
            continue
        p95 = _p(times, 0.95)
        p95s[label] = p95
        flag = "ok" if p95 <= TARGET_P95_MS else "MISSED"
        if p95 > TARGET_P95_MS:
            missed.append(label)
        median = statistics.median(times)
        report.append(f"| {label} | {median:.0f} | {p95:.0f} |")
        print(f"  {label:<32} {median:>8.1f} {p95:>8.1f} {max(times):>8.1f}  {flag}")

    budget_missed, budget_report = _search_budget(
        client, {label: p95s[label] for label in BUSY_ROUTES if label in p95s}
    )
    missed += budget_missed + sqlite_missed
    report += ["", *budget_report]

    keeper = ""
    if keeper_ms:
        keeper = f"median {statistics.median(keeper_ms):.0f} ms, max {max(keeper_ms):.0f} ms"
        print(f"\n  background refresh + sums of every window (keeper, once an hour): {keeper}")

    # The same questions asked of the raw rows, as a dashboard without rollups would.
    print("\n  without rollups (raw SQL on the same rows, same run):")
    p95_sql = "SELECT name, percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM"
    naive = {
        "p95 by name, 7 days": f"{p95_sql} flow_tracker_processes"
        " WHERE finished_at > now() - interval '7 days' GROUP BY name",
        "count by status, 30 days": "SELECT status, count(*) FROM flow_tracker_processes "
        "WHERE finished_at > now() - interval '30 days' GROUP BY status",
        "flow p95 by name, 24 h": f"{p95_sql} flow_tracker_flows"
        " WHERE finished_at > now() - interval '24 hours' GROUP BY name",
    }
    naive_rows: list[str] = []
    with psycopg.connect(dsn) as conn:
        for label, sql in naive.items():
            times = []
            for _ in range(3 if quick else 5):
                t0 = time.perf_counter()
                conn.execute(sql).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
            print(f"  {label:<32} {statistics.median(times):>8.1f} ms (median)")
            naive_rows.append(f"| {label} | {statistics.median(times):.0f} |")
    report += [
        "",
        "The same questions asked of the raw rows, without rollups (same run):",
        "",
        "| raw SQL | median ms |",
        "|---|---:|",
        *naive_rows,
    ]
    if keeper:
        report += [
            "",
            "The statistics keeper's refresh of the rollups and the sums of every window, "
            f"off the request path: {keeper}.",
        ]
    publish("dashboard", report, readme="--readme" in argv)
    if build:
        print(f"\n  data set built in {sum(build.values()):.0f} s: {build}")
    if missed:
        print(f"\n  targets missed: {', '.join(missed)}")
        return 1
    print("\n  every route within target")
    return 0


def _wait_for_first_build(keeper: Any, url: str, started: float) -> tuple[float | None, float]:
    """Wait until the statistics keeper has published rollups of every day.

    Returns when, in seconds after ``started``, the first rollups were stored
    (None: before this wait began, the caller knows whether they already were)
    and when the keeper published the finished build.
    """
    from flow_tracker.store.engine import Store

    store = Store(url)
    newest: float | None = None
    try:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            state = keeper.state
            if state is not None and state.rolled_from is None:
                break
            if newest is None and rollups.stored_version(store).watermark is not None:
                newest = time.perf_counter() - started
            time.sleep(0.1)
        else:
            raise SystemExit("the statistics keeper did not finish its first build within an hour")
        return newest, time.perf_counter() - started
    finally:
        store.dispose()


SEARCH_BUDGET_S = 5.0
BROAD_SEARCHES = {
    "rare term, any time, oldest first": "/processes?q=zzzzqq&since=2000-01-01&order=oldest",
    "rare term, any time, newest first": "/processes?q=zzzzqq&since=2000-01-01",
    "common term, any time, newest first": "/processes?q=e&since=2000-01-01",
    "common term, any time, oldest first": "/processes?q=e&since=2000-01-01&order=oldest",
    "api: rare term, any time, oldest": "/api/processes?q=zzzzqq&since=2000-01-01&order=oldest",
}
BUSY_ROUTES = {
    "processes": "/processes",
    "overview 24h": "/?window=24h",
    "api stats 24h": "/api/stats?window=24h",
}
CONCURRENT_SEARCHES = 8


def _search_budget(client: object, baseline: dict[str, float]) -> tuple[list[str], list[str]]:
    """Every broad search answers or refuses within the budget, and starves no other page.

    Wall time as the client sees it (several statements, each under the app's
    ``query_timeout``); then the same searches from 8 threads at once while the
    other pages are timed again, beside their p95 of the run above.
    """
    import threading

    from starlette.testclient import TestClient

    app = client.app  # type: ignore[attr-defined]
    missed: list[str] = []
    report = [
        f"Broad searches (target: answered or refused within {SEARCH_BUDGET_S:.0f} s):",
        "",
        "| search | seconds | answer |",
        "|---|---:|---|",
    ]
    print(f"\n  search time budget (answer or refuse within {SEARCH_BUDGET_S:.0f} s)")
    missed += _time_broad_searches(app, "search", report)
    report += [
        "",
        f"Other pages while {CONCURRENT_SEARCHES} broad searches are sent at once:",
        "",
        "| page | p95 ms alone | p95 ms meanwhile |",
        "|---|---:|---:|",
    ]

    stop = threading.Event()

    def hammer(path: str) -> None:
        own = TestClient(app)
        while not stop.is_set():
            own.get(path)

    threads = [
        threading.Thread(target=hammer, args=(list(BROAD_SEARCHES.values())[i % 4],), daemon=True)
        for i in range(CONCURRENT_SEARCHES)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let them take their connections
    print(f"\n  other pages while {CONCURRENT_SEARCHES} broad searches run (server p95 ms)")
    for label, path in BUSY_ROUTES.items():
        times = []
        failures = 0
        for _ in range(20):
            response = TestClient(app).get(path)
            if response.status_code != 200:
                failures += 1
                continue
            times.append(_server_ms(response))
        p95 = _p(times, 0.95) if times else float("inf")
        usual = baseline.get(label, float("nan"))
        # "Usual" with room for the CPU the searches take on this machine's two cores.
        ok = failures == 0 and p95 <= max(TARGET_P95_MS, 3 * usual)
        if not ok:
            missed.append(f"busy: {label}")
        report.append(f"| {label} | {usual:.0f} | {p95:.0f} |")
        print(
            f"  {label:<38} p95 {p95:>7.1f}  (alone {usual:>6.1f})  "
            f"{failures} failed  {'ok' if ok else 'MISSED'}"
        )
    stop.set()
    for thread in threads:
        thread.join(30)
    return missed, report


def _sqlite_search_budget(processes: int) -> list[str]:
    """The broad searches on a SQLite file of ``processes`` processes and 5 logs each."""
    import tempfile
    import uuid
    from datetime import datetime, timedelta, timezone

    from flow_tracker.store.bulk import insert_rows
    from flow_tracker.store.engine import Store
    from flow_tracker.web import create_app

    print(f"\n== search time budget on SQLite: {processes:,} processes, {5 * processes:,} logs ==")
    folder = tempfile.mkdtemp(prefix="flow-tracker-bench-")
    url = f"sqlite:///{folder}/search.db"
    store = Store(url)
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    for offset in range(0, processes, 20_000):
        procs, logs = [], []
        for n in range(offset, min(processes, offset + 20_000)):
            pid = uuid.uuid4()
            created = now - timedelta(seconds=rng.randrange(30 * 86_400))
            procs.append(
                {
                    "id": pid,
                    "name": f"Job{n % 40}",
                    "category": "jobs",
                    "status": "completed",
                    "created_at": created,
                    "updated_at": created,
                }
            )
            # Log ids are UUIDv7 of their time, as the writer makes them.
            stamp = int(created.timestamp() * 1000) << 80 | 0x7 << 76 | 0b10 << 62
            logs += [
                {
                    "id": uuid.UUID(int=stamp | rng.getrandbits(62)),
                    "process_id": pid,
                    "level": "info",
                    "position": k,
                    "message": f"customer {rng.randrange(10**6)} step {k} done",
                    "created_at": created,
                }
                for k in range(5)
            ]
        insert_rows(store, procs, [], logs)
    store.dispose()
    print(f"  built in {time.perf_counter() - t0:.0f} s")
    app = create_app(url, keep_statistics=False)
    missed = _time_broad_searches(app, "sqlite search", [])
    app.state.dashboard.store.dispose()
    return missed


def _time_broad_searches(app: Any, kind: str, report: list[str]) -> list[str]:
    """Time each of :data:`BROAD_SEARCHES` once as a client sees it; return the misses."""
    from starlette.testclient import TestClient

    missed = []
    for label, path in BROAD_SEARCHES.items():
        started = time.perf_counter()
        status = TestClient(app).get(path).status_code
        took = time.perf_counter() - started
        ok = took <= SEARCH_BUDGET_S and status in (200, 400)
        if not ok:
            missed.append(f"{kind}: {label}")
        answer = "answered" if status == 200 else f"refused ({status})"
        report.append(f"| {label} | {took:.2f} | {answer} |")
        print(f"  {label:<38} {took:>6.2f} s  {answer}  {'ok' if ok else 'MISSED'}")
    return missed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
