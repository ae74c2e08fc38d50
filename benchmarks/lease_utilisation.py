"""Lease utilisation: N jobs x one HTTP step of a fixed latency, through a service whose
lease limit is L, side by side with a plain Celery prefork pool of L processes making
the same calls, on the same machine in the same run.

The gateway runs two workers (the limit holds across workers) whose pools add up to L.
The ideal wall time is N x latency / L. Reported per run: wall time (first submission
to the last call's end) divided by the ideal, and the most calls the service saw in
flight at once (counted by the simulated service itself). Target for the gateway:
<= 1.10 x ideal with the limit never exceeded. Both run in rounds, in turn, and the
ratios reported are medians over the rounds (the machine's speed drifts).

With --backlog, every job is queued before any worker starts, and the clock starts
at the first call: what the slots' use costs without job creation sharing the
machine's cores (on two cores, creating 400 jobs takes longer than the ideal run).
Workers that boot at different moments fill their slots at different moments too:
`--workers 1 --worker-concurrency 16` compares like with like.

    python -m benchmarks.lease_utilisation [--jobs 400] [--limit 16] [--latency-ms 100]
                                           [--workers 2] [--worker-concurrency 8] [--rounds 3]
                                           [--backlog]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_run_options,
    python,
    run_folder,
    run_rounds,
    scratch_environment,
)
from benchmarks.results import Results, server_versions, write_results
from benchmarks.throughput import _worker
from tests.harness import Proc, Simulators, free_port, port_open, wait_until

SERVICE = "leased"
PLAIN_SERVICE = "plain"
SUBMITTERS = 1
CATALOG = """\
services:
  {service}: {{kind: http, url: "${{SIM_URL}}/{service}", queue: {service},
              concurrency: {limit}, timeout_s: 30, lease_ttl_s: 30}}
features:
  one_call: {{steps: [{service}]}}
"""


@dataclass(frozen=True)
class Result:
    name: str
    wall_s: float
    ideal_s: float
    max_in_flight: int
    calls: int
    submit_s: float
    utilisation: float  # busy slot-seconds / (limit x wall time), as issue 4's AC1 counts

    @property
    def ratio(self) -> float:
        return self.wall_s / self.ideal_s


def fresh_service(sim: Simulators, service: str, latency_ms: float) -> None:
    """The simulated service with its latency and no calls counted yet (a new round)."""
    sim.reset()
    sim.behave(service, latency_ms=latency_ms)


def wait_for_calls(sim: Simulators, service: str, calls: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        stats = sim.stats(service)
        return stats if stats["calls"] >= calls and stats["in_flight"] == 0 else None

    return wait_until(done, 600, 0.1, f"{calls} calls to {service}")


def run_gateway(
    args: argparse.Namespace, env: dict[str, str], sim: Simulators, logs: Path
) -> Result:
    from sqlalchemy import func, select

    from app.catalog import current_catalog
    from app.db import init_db, session_scope
    from app.jobs.service import submit_job
    from app.jobs.warm_up import prepare_job_creation
    from app.models import Job
    from worker.celery_app import celery_app

    init_db()
    catalog = current_catalog()
    prepare_job_creation(catalog)  # the submitter stands in for a running API (app/main.py)
    argv = [
        python(),
        "-m",
        "app.cli",
        "worker",
        "-Q",
        SERVICE,
        "-c",
        str(args.worker_concurrency),
        "--loglevel",
        "WARNING",
    ]
    names = [f"gateway-worker-{i}" for i in range(args.workers)]
    workers = [] if args.backlog else [_worker(argv, n, env, logs, celery_app) for n in names]
    fresh_service(sim, SERVICE, args.latency_ms)
    try:

        def submit(n: int) -> uuid.UUID:
            return submit_job(catalog, feature_name="one_call", input_data={"n": n}).job.id

        started = time.time()
        with ThreadPoolExecutor(SUBMITTERS) as pool:
            ids = list(pool.map(submit, range(args.jobs)))
        submitted = time.time()
        if args.backlog:
            workers = [Proc(name, argv, env, logs) for name in names]  # they start at once
        stats = wait_for_calls(sim, SERVICE, args.jobs)

        def all_completed() -> bool:
            with session_scope() as session:
                done = session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.id.in_(ids), Job.status == "COMPLETED")
                )
            return done == args.jobs

        wait_until(all_completed, 60, 0.1, "every job to complete")
    finally:
        for worker in workers:
            worker.stop()
    return _result("CAO gateway (leases)", args, (started, submitted), stats)


def run_plain(args: argparse.Namespace, env: dict[str, str], sim: Simulators, logs: Path) -> Result:
    from benchmarks.plain_http_app import http_call, plain_app

    argv = [
        python(),
        "-m",
        "celery",
        "-A",
        "benchmarks.plain_http_app:plain_app",
        "worker",
        "-Q",
        "plain",
        "-c",
        str(args.limit),
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    worker = None if args.backlog else _worker(argv, "plain-worker", env, logs, plain_app)
    fresh_service(sim, PLAIN_SERVICE, args.latency_ms)
    try:
        url = f"{env['SIM_URL']}/{PLAIN_SERVICE}"
        started = time.time()
        for n in range(args.jobs):
            http_call.delay(url, n)
        submitted = time.time()
        if args.backlog:
            worker = Proc("plain-worker", argv, env, logs)
        stats = wait_for_calls(sim, PLAIN_SERVICE, args.jobs)
    finally:
        if worker is not None:
            worker.stop()
    return _result(f"plain Celery prefork {args.limit}", args, (started, submitted), stats)


def _result(
    name: str, args: argparse.Namespace, submission: tuple[float, float], stats: dict[str, Any]
) -> Result:
    started, submitted = submission
    clock_from = started
    if args.backlog:  # the clock starts with the first call, once every job is queued
        clock_from = min(request["received_at"] for request in stats["requests"])
    wall_s = stats["last_end_at"] - clock_from
    return Result(
        name=name,
        wall_s=wall_s,
        ideal_s=args.jobs * args.latency_ms / 1000 / args.limit,
        max_in_flight=stats["max_in_flight"],
        calls=stats["calls"],
        submit_s=submitted - started,
        utilisation=stats["busy_seconds"] / (args.limit * wall_s),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--limit", type=int, default=16, help="the service's lease limit")
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    # Two workers sized, together, to the service's limit: the pool an SRE gives a queue
    # whose one service allows 16 calls. A larger pool still never exceeds the limit,
    # but its extra processes park steps that then wait for a slot (docs/operations.md).
    parser.add_argument("--worker-concurrency", type=int, default=8)
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="queue every job first, then start the workers and time from the first call: "
        "the slots' use without job creation sharing the machine",
    )
    add_run_options(parser, redis_db=13)
    args = parser.parse_args()

    logs, catalog = run_folder(CATALOG.format(service=SERVICE, limit=args.limit))
    port = free_port()
    sim_url = f"http://127.0.0.1:{port}"
    with scratch_environment(args.redis_db, CAO_CATALOG=str(catalog), SIM_URL=sim_url) as env:
        from app.migrate import upgrade_head

        upgrade_head()
        servers = server_versions(env)
        simulators = Proc(
            "simulators", [python(), "-m", "app.cli", "simulators", "--port", str(port)], env, logs
        )
        try:
            wait_until(lambda: port_open(port), 30, message="simulators")
            sim = Simulators(sim_url)
            runs = {
                "plain": lambda env: run_plain(args, env, sim, logs),
                "gateway": lambda env: run_gateway(args, env, sim, logs),
            }
            rounds = run_rounds(runs, args.rounds, env)
        finally:
            simulators.stop()

    print(
        f"\n{args.jobs} jobs x one {args.latency_ms:g} ms call, limit {args.limit} "
        f"(gateway: {args.workers} workers x {args.worker_concurrency})"
        + (", from a backlog: timed from the first call" if args.backlog else "")
    )
    print(
        f"{'round':<7}{'run':<28}{'wall s':>9}{'ideal s':>9}{'÷ ideal':>9}"
        f"{'max in flight':>15}{'calls':>7}{'submit s':>10}{'busy':>7}"
    )
    for number, results in enumerate(rounds, 1):
        for r in results.values():
            print(
                f"{number:<7}{r.name:<28}{r.wall_s:>9.2f}{r.ideal_s:>9.2f}{r.ratio:>9.3f}"
                f"{r.max_in_flight:>15}{r.calls:>7}{r.submit_s:>10.2f}{r.utilisation:>7.2f}"
            )
    ratios = {name: statistics.median(rs[name].ratio for rs in rounds) for name in runs}
    most = max(rs["gateway"].max_in_flight for rs in rounds)
    print(f"median ÷ ideal: gateway {ratios['gateway']:.3f}, plain {ratios['plain']:.3f}")
    verdict = "met" if ratios["gateway"] <= 1.10 and most <= args.limit else "MISSED"
    print(f"target <= 1.10 x ideal, in flight <= {args.limit} (most seen: {most}): {verdict}")
    print(f"logs: {logs}")
    write_results(
        Results(
            benchmark="lease_utilisation",
            parameters=vars(args),
            gateway=_figures(rounds, "gateway"),
            baselines={f"plain Celery prefork {args.limit}": _figures(rounds, "plain")},
            ratios={
                "wall time, gateway / plain": statistics.median(
                    rs["gateway"].wall_s / rs["plain"].wall_s for rs in rounds
                )
            },
            servers=servers,
            detail=[{key: vars(r) for key, r in rs.items()} for rs in rounds],
        )
    )


def _figures(rounds: list[dict[str, Result]], key: str) -> dict[str, float]:
    """One run's figures over the rounds: medians, and the most calls ever in flight."""
    return {
        "wall ÷ ideal (median of rounds)": statistics.median(rs[key].ratio for rs in rounds),
        "slots busy (median of rounds)": statistics.median(rs[key].utilisation for rs in rounds),
        "submission s (median of rounds)": statistics.median(rs[key].submit_s for rs in rounds),
        "most calls in flight": max(rs[key].max_in_flight for rs in rounds),
    }


if __name__ == "__main__":
    main()
