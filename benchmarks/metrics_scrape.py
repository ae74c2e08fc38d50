"""What /metrics costs: the step throughput while a replica scrapes (and so folds the
event log) every second, against the same run with no scrapes; then, on a log of
`--seeded-jobs` (100,000) jobs' events, the time to fold that backlog, a scrape with
nothing new, and a scrape that folds `--new-jobs` (1000) jobs' events.

The step path does no metrics work at all (the counters are folded from the event log
by whoever scrapes), so the first comparison measures what the folds' reads and
writes take from the workers sharing the database. The scrape runs in this process,
through the same collector `GET /metrics` renders (HTTP and auth left out).
Baseline for a scrape: the gauges alone (Redis and jobs by status), without the fold.

    python -m benchmarks.metrics_scrape [--jobs 300] [--concurrency 4] [--rounds 3]
                                        [--seeded-jobs 100000] [--new-jobs 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import add_run_options, run_rounds, scratch_environment
from benchmarks.results import Results, server_versions, write_results
from benchmarks.throughput import _settle_database, run_gateway

SCRAPE_INTERVAL_S = 1.0


def _scrape() -> bytes:
    from app.api.metrics import render

    return render()


def _gauges_only() -> None:
    from app.api.metrics import GatewayCollector
    from app.catalog import current_catalog

    collector = GatewayCollector()
    list(collector._redis_metrics(current_catalog()))
    list(collector._database_metrics())


def _with_scraper(
    run: Callable[[], dict[str, Any]],
    interval_s: float = SCRAPE_INTERVAL_S,
    scrape: Callable[[], object] = _scrape,
) -> dict[str, Any]:
    """`run()` while a thread calls `scrape` every `interval_s`; adds the scrape times."""
    stop = threading.Event()
    times: list[float] = []

    def scraper() -> None:
        while not stop.wait(interval_s):
            started = time.perf_counter()
            scrape()
            times.append(time.perf_counter() - started)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        result = run()
    finally:
        stop.set()
        thread.join()
    return {**result, "scrapes": len(times), "scrape_ms_max": max(times, default=0) * 1000}


def _timed_ms(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


# Finished one-step jobs and their four events, numbered after the log's newest id.
_SEED_JOBS = """
INSERT INTO job (id, tenant, feature_name, status, progress, current_step, total_steps,
                 input_data, context, recipe, last_seq, created_at, updated_at)
SELECT md5(:tag || i)::uuid, 'default', 'seeded', 'COMPLETED', 100, 0, 1, '{}', '{}', '{}',
       4, now(), now()
FROM generate_series(1, :n) AS i
"""
_SEED_EVENTS = """
INSERT INTO job_event (id, job_id, seq, type, feature_name, step_index, step_name, attempt,
                       progress, ts, data)
SELECT base.top + 4 * (i - 1) + k, md5(:tag || i)::uuid, k,
       (ARRAY['JOB_CREATED', 'STEP_STARTED', 'STEP_COMPLETED', 'JOB_COMPLETED'])[k], 'seeded',
       CASE WHEN k IN (2, 3) THEN 0 END, CASE WHEN k IN (2, 3) THEN 'seeded_svc' END,
       CASE WHEN k IN (2, 3) THEN 1 END, 0, now() + k * interval '1 second', '{}'
FROM (SELECT coalesce(max(id), 0) AS top FROM job_event) AS base,
     generate_series(1, :n) AS i, generate_series(1, 4) AS k
ORDER BY i, k
"""


def _seed(pg_url: str, jobs: int, tag: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for statement in (_SEED_JOBS, _SEED_EVENTS):
            conn.execute(
                statement.replace(":tag", "%(tag)s").replace(":n", "%(n)s"), {"tag": tag, "n": jobs}
            )
        conn.execute("ANALYZE job, job_event")


def _scrape_costs(pg_url: str, seeded: int, new: int) -> dict[str, float]:
    from app.events.metrics_fold import fold_events

    fold_events()  # what the throughput rounds left
    _seed(pg_url, seeded, "seed")
    started = time.perf_counter()
    report = fold_events()
    backlog_s = time.perf_counter() - started
    figures = {
        f"fold of a {seeded}-job backlog s": backlog_s,
        "fold rate events/s": report.events / backlog_s,
        f"scrape, {seeded} jobs, nothing new ms": _timed_ms(_scrape, 20),
        f"gauges alone, {seeded} jobs ms": _timed_ms(_gauges_only, 20),
    }
    fresh = []
    for round_ in range(3):
        _seed(pg_url, new, f"new{round_}")
        started = time.perf_counter()
        _scrape()
        fresh.append((time.perf_counter() - started) * 1000)
    figures[f"scrape folding {new} new jobs ({4 * new} events) ms"] = statistics.median(fresh)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seeded-jobs", type=int, default=100_000)
    parser.add_argument("--new-jobs", type=int, default=1000)
    add_run_options(parser, redis_db=15)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="cao-bench-"))

    def gateway(env: dict[str, str]) -> dict[str, Any]:
        return run_gateway(args.jobs, args.concurrency, env, log_dir, sequential=0)

    runs: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
        "no scrapes": gateway,
        "scraped every second": lambda env: _with_scraper(lambda: gateway(env)),
    }
    with scratch_environment(args.redis_db) as env:
        from app.migrate import upgrade_head

        upgrade_head()
        servers = server_versions(env)
        _settle_database(args.concurrency, env, log_dir)
        rounds = run_rounds(runs, args.rounds, env)
        costs = _scrape_costs(env["BENCH_PG_URL"], args.seeded_jobs, args.new_jobs)

    ratios = [
        r["scraped every second"]["jobs_per_s"] / r["no scrapes"]["jobs_per_s"] for r in rounds
    ]
    rate = {name: statistics.median(r[name]["jobs_per_s"] for r in rounds) for name in runs}
    print(f"\n{args.jobs} jobs x 4 no-op steps, worker concurrency {args.concurrency}")
    for number, results in enumerate(rounds, 1):
        print(
            f"round {number}: "
            + ", ".join(f"{n} {r['jobs_per_s']:.1f} jobs/s" for n, r in results.items())
        )
    print(f"jobs/s scraped every second / no scrapes = {statistics.median(ratios):.3f} (median)")
    for name, value in costs.items():
        print(f"  {name}: {value:.1f}")
    print(f"logs: {log_dir}")
    write_results(
        Results(
            benchmark="metrics_scrape",
            parameters=vars(args),
            gateway={"jobs/s scraped every second (median)": rate["scraped every second"], **costs},
            baselines={"no scrapes": {"jobs/s (median)": rate["no scrapes"]}},
            ratios={"jobs/s, scraped every second / no scrapes": statistics.median(ratios)},
            servers=servers,
            detail=[
                {
                    n: {k: v for k, v in r.items() if not k.startswith("handoff")}
                    for n, r in results.items()
                }
                for results in rounds
            ],
        )
    )


if __name__ == "__main__":
    main()
