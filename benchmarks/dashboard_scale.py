"""The dashboard at ten times the data: every route at 1 M and at 10 M processes, in one run.

``python -m benchmarks dashboard --scale``. Both data sets (1 M processes with 5 M
flows and 5 M logs; 10 M with 50 M and 50 M) are built once and kept while fresh
(:mod:`benchmarks.dashboard_data`); the run says how long a build took and how
much disk each takes. Each route is timed on the smaller set and then on the
larger one, so both see the same machine at the same moment. Targets: at 10 M,
every route's p95 ≤ 100 ms and ≤ 1.5x its own p95 at 1 M (a cost that grows with
the log of the data, not with the data; a route of a few ms gets 5 ms of slack, less
than one request's noise here), and every broad search answers or refuses within 5 s.
"""

from __future__ import annotations

import os
import statistics
import time

import psycopg

from benchmarks.dashboard import (
    TARGET_P95_MS,
    Site,
    _p,
    _search_budget,
    open_site,
)
from benchmarks.readme import publish

SIZES = (1_000_000, 10_000_000)
RATIO = 1.5
SLACK_MS = 5.0
REPEATS = 40


def _disk(site: Site) -> str:
    with psycopg.connect(site.dsn) as conn:
        row = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
    return "?" if row is None else str(row[0])


def main(argv: list[str]) -> int:
    """Time every route on both data sets, side by side; 1 if a target is missed."""
    small_n, big_n = SIZES
    print(f"\n== dashboard at scale: {small_n:,} and {big_n:,} processes, same run ==")
    sites: list[Site] = []
    for processes in SIZES:
        started = time.perf_counter()
        site = open_site(processes)
        if site is None:
            print("  skipped: no PostgreSQL on 127.0.0.1:5432")
            return 1
        sites.append(site)
        built = f"built in {sum(site.build.values()):,.0f} s" if site.build else "reused"
        print(
            f"  {processes:,} processes: data set {built}, {_disk(site)} on disk; "
            f"ready in {time.perf_counter() - started:,.0f} s"
        )
    small, big = sites
    sizes = "; ".join(
        f"{site.processes:,} processes: {_disk(site)} on disk"
        + (f", built in this run in {sum(site.build.values()) / 60:,.0f} min" if site.build else "")
        for site in sites
    )

    print(
        f"\n  {'route':<32} {'p95 1M':>8} {'p95 10M':>8} {'ratio':>6} {'p50 10M':>8}"
        f"  target: p95 ≤ {TARGET_P95_MS:.0f} ms and ≤ {RATIO}x 1M"
    )
    missed: list[str] = []
    big_p95s: dict[str, float] = {}
    report = [
        f"Measured by `python -m benchmarks dashboard --scale` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, PostgreSQL; {small_n:,} processes ({5 * small_n:,} flows and "
        f"logs) and {big_n:,} ({5 * big_n:,}), each route timed on both in turn; server time "
        f"(`Server-Timing`), {REPEATS} requests per route after a warm-up. Target at "
        f"{big_n:,}: p95 ≤ {TARGET_P95_MS:.0f} ms and ≤ {RATIO}x the p95 at {small_n:,}. "
        f"Data sets: {sizes}.",
        "",
        "| route | p95 ms, 1M | p95 ms, 10M | ratio |",
        "|---|---:|---:|---:|",
    ]
    for (label, make_small), (_label, make_big) in zip(small.routes, big.routes, strict=True):
        small_times = small.time_route(make_small, REPEATS)
        big_times = big.time_route(make_big, REPEATS)
        if small_times is None or big_times is None:
            missed.append(label)
            continue
        p95_small, p95_big = _p(small_times, 0.95), _p(big_times, 0.95)
        big_p95s[label] = p95_big
        ratio = p95_big / p95_small if p95_small else float("inf")
        ok = p95_big <= TARGET_P95_MS and p95_big <= max(RATIO * p95_small, p95_small + SLACK_MS)
        if not ok:
            missed.append(label)
        report.append(f"| {label} | {p95_small:.0f} | {p95_big:.0f} | {ratio:.2f}x |")
        print(
            f"  {label:<32} {p95_small:>8.1f} {p95_big:>8.1f} {ratio:>5.2f}x "
            f"{statistics.median(big_times):>8.1f}  {'ok' if ok else 'MISSED'}"
        )

    print(f"\n  at {big_n:,} processes:")
    budget_missed, budget_report = _search_budget(big.client, big_p95s)
    missed += budget_missed
    report += ["", f"At {big_n:,} processes:", "", *budget_report]
    report += ["", f"Targets missed in this run: {', '.join(missed) if missed else 'none'}."]
    publish("dashboard_scale", report, readme="--readme" in argv)
    for site in sites:
        site.client.app.state.dashboard.store.dispose()
    if missed:
        print(f"\n  targets missed: {', '.join(missed)}")
        return 1
    print("\n  every route within target at both sizes")
    return 0
