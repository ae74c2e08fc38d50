"""Throughput: 1000 jobs x 4 no-op python steps through the gateway, side by side with a
plain Celery chain of 4 tasks and a Celery chain that writes a row per step, on the same
Redis and PostgreSQL in the same run. Reports jobs/s, ratios and the step hand-off
latency (one step's commit to the moment the next step's work runs).

The three run in rounds, in a different order each round, and the ratios are the
medians over rounds: this machine's speed drifts during a run, and a ratio taken
across minutes apart would measure the drift. Before the rounds, 200 gateway jobs and
an ANALYZE give the scratch database planner statistics (`_settle_database`).

    python -m benchmarks.throughput [--jobs 1000] [--concurrency 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from benchmarks.common import (
    add_run_options,
    cpu_seconds,
    percentile,
    python,
    run_rounds,
    scratch_environment,
    wait_until_idle,
)
from benchmarks.results import Results, server_versions, write_results
from tests.harness import Proc, wait_until


def _worker(argv: list[str], name: str, env: dict[str, str], log_dir, app) -> Proc:
    """Start a worker at WARNING (no per-task log lines); return once it answers pings
    and its pool has finished starting."""
    proc = Proc(name, argv, env, log_dir)
    wait_until(lambda: not proc.alive() or app.control.ping(timeout=0.5), 60, 0.2, name)
    if not proc.alive():
        raise RuntimeError(proc.log_text())
    wait_until_idle(proc.pid)
    return proc


def _create(count: int, feature: str = "four_noops") -> list[uuid.UUID]:
    from app.catalog import current_catalog
    from app.jobs.service import submit_job

    catalog = current_catalog()
    return [submit_job(catalog, feature_name=feature, input_data={}).job.id for _ in range(count)]


def _all_completed(ids: list[uuid.UUID]) -> bool:
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.models import Job

    with session_scope() as session:
        # Jobs finish roughly in the order they were created: until the last one has,
        # a primary-key read answers. Counting all of them each poll took about 5 ms of
        # this process's CPU and the database's, from the run it times (2 cores); the
        # chains' poll is one Redis GET.
        if session.scalar(select(Job.status).where(Job.id == ids[-1])) != "COMPLETED":
            return False
        done = session.scalar(
            select(func.count()).select_from(Job).where(Job.id.in_(ids), Job.status == "COMPLETED")
        )
    return done == len(ids)


def _handoffs_ms(ids: list[uuid.UUID]) -> list[float]:
    """Per job, each step's commit (its row's finished_at) to the moment the next step's
    work ran (the `ran_at` its output records)."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import JobStep

    with session_scope() as session:
        rows = session.execute(
            select(JobStep.job_id, JobStep.step_index, JobStep.output, JobStep.finished_at).where(
                JobStep.job_id.in_(ids)
            )
        ).all()
    steps: dict[uuid.UUID, dict[int, tuple]] = {}
    for job_id, index, output, finished_at in rows:
        steps.setdefault(job_id, {})[index] = (output["ran_at"], finished_at.timestamp())
    return [
        (job[i + 1][0] - job[i][1]) * 1000 for job in steps.values() for i in range(len(job) - 1)
    ]


def _worker_argv(queue: str, concurrency: int) -> list[str]:
    return [python(), "-m", "app.cli", "worker", "-Q", queue, "-c", str(concurrency)] + [
        "--loglevel",
        "WARNING",
    ]


@contextlib.contextmanager
def gateway_workers(concurrency: int, env: dict[str, str], log_dir) -> Iterator[tuple[Proc, Proc]]:
    """The gateway's workers of a run, started and ready: `bench` with `concurrency`
    processes and `bench_b` with one; this process stands in for a running API."""
    from app.catalog import current_catalog
    from app.db import init_db
    from app.jobs.warm_up import prepare_job_creation
    from worker.celery_app import celery_app

    init_db()
    prepare_job_creation(current_catalog())  # the submitter stands in for a running API
    worker = _worker(_worker_argv("bench", concurrency), "gateway-worker", env, log_dir, celery_app)
    try:
        other = _worker(_worker_argv("bench_b", 1), "gateway-worker-b", env, log_dir, celery_app)
        try:
            yield worker, other
        finally:
            other.stop()
    finally:
        worker.stop()


def measure_gateway(jobs: int, sequential: int, workers: tuple[Proc, Proc]) -> dict[str, Any]:
    """W1 on running workers, then the hand-offs."""
    cpu_before, started = _workers_cpu(*workers), time.perf_counter()
    ids = _create(jobs)
    wait_until(lambda: _all_completed(ids), 900, 0.1, "gateway jobs")
    elapsed = time.perf_counter() - started
    cpu_used = _workers_cpu(*workers) - cpu_before
    # Hand-off on an idle system: one job at a time, so no backlog sits between steps.
    # Steps on one queue start in the worker that committed the previous one; steps
    # alternating between queues of two workers go through the broker.
    same_queue = _one_at_a_time(sequential, "four_noops")
    across_queues = _one_at_a_time(sequential, "alternating_queues")
    return {
        "seconds": elapsed,
        "jobs_per_s": jobs / elapsed,
        "worker_cpu_ms_per_step": cpu_used / (4 * jobs) * 1000,
        "handoff_same_queue_ms": _handoffs_ms(same_queue),
        "handoff_across_queues_ms": _handoffs_ms(across_queues),
    }


def run_gateway(
    jobs: int, concurrency: int, env: dict[str, str], log_dir, sequential: int
) -> dict[str, Any]:
    with gateway_workers(concurrency, env, log_dir) as workers:
        return measure_gateway(jobs, sequential, workers)


def _workers_cpu(*workers: Proc) -> float:
    """CPU seconds the workers (main and pool processes) have used so far."""
    return sum(cpu_seconds(worker.pid) for worker in workers)


def _one_at_a_time(count: int, feature: str) -> list[uuid.UUID]:
    done: list[uuid.UUID] = []
    for _ in range(count):
        job = _create(1, feature)
        # Polled every 20 ms, not faster: the poll's query and this process would
        # otherwise take CPU from the worker whose hand-off is being timed (2 cores).
        # The figure comes from the job's own timestamps, not from this wait.
        wait_until(partial(_all_completed, job), 60, 0.02, "sequential job")
        done += job
    return done


def _settle_database(concurrency: int, env: dict[str, str], log_dir) -> None:
    """Bring the fresh database to the state a deployment's is in after its first
    minutes: some jobs, and planner statistics (autovacuum's first ANALYZE comes a
    minute or more after the tables fill; every run here is over in seconds). With no
    statistics, a statement a worker prepares early keeps a plan made for near-empty
    tables: a job update may then find its row through the job status index, reading
    every RUNNING job, rather than by primary key. (Step updates cannot since the step
    status index is partial: alembic revision 0003.)"""
    import psycopg

    run_gateway(200, concurrency, env, log_dir, sequential=0)
    with psycopg.connect(env["BENCH_PG_URL"], autocommit=True) as conn:
        conn.execute("ANALYZE")


def run_chain(jobs: int, concurrency: int, env: dict[str, str], log_dir, write_rows: bool) -> dict:
    import psycopg
    import redis
    from celery import chain

    from benchmarks import chain_app as bench

    if write_rows:
        with psycopg.connect(env["BENCH_PG_URL"], autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS bench_step "
                "(id bigserial primary key, run_id text, step int, done_at timestamptz)"
            )
    client = redis.Redis.from_url(env["REDIS_URL"])
    client.delete(bench.DONE_KEY)
    argv = [
        python(),
        "-m",
        "celery",
        "-A",
        "benchmarks.chain_app:chain_app",
        "worker",
        "-Q",
        "chain",
        "-c",
        str(concurrency),
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    worker = _worker(argv, "chain-worker", env, log_dir, bench.chain_app)
    try:
        started = time.perf_counter()
        for _ in range(jobs):
            run_id = uuid.uuid4().hex
            if write_rows:
                signatures = [bench.noop_db.s(i, i == 3, run_id) for i in range(4)]
                signatures[0] = bench.noop_db.s(None, 0, False, run_id)
            else:
                signatures = [bench.noop.s(i, i == 3) for i in range(4)]
                signatures[0] = bench.noop.s(None, 0, False)
            chain(*signatures).apply_async()
        wait_until(lambda: int(client.get(bench.DONE_KEY) or 0) >= jobs, 900, 0.1, "chains")
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
    return {"seconds": elapsed, "jobs_per_s": jobs / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sequential", type=int, default=50, help="jobs for the hand-off")
    add_run_options(parser, redis_db=12)
    args = parser.parse_args()

    import tempfile
    from pathlib import Path

    log_dir = Path(tempfile.mkdtemp(prefix="cao-bench-"))
    runs: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
        "plain Celery chain": lambda env: run_chain(
            args.jobs, args.concurrency, env, log_dir, write_rows=False
        ),
        "Celery chain + row/step": lambda env: run_chain(
            args.jobs, args.concurrency, env, log_dir, write_rows=True
        ),
        "CAO gateway": lambda env: run_gateway(
            args.jobs, args.concurrency, env, log_dir, args.sequential
        ),
    }
    with scratch_environment(args.redis_db) as env:
        from app.migrate import upgrade_head

        upgrade_head()
        servers = server_versions(env)
        _settle_database(args.concurrency, env, log_dir)
        rounds = run_rounds(runs, args.rounds, env)

    print(f"\n{args.jobs} jobs x 4 no-op steps, worker concurrency {args.concurrency}")
    header = "".join(f"{name:>26}" for name in runs)
    print(f"{'round':<7}{header}{'/ chain+DB':>12}{'/ plain':>9}")
    vs_db, vs_plain = [], []
    for number, results in enumerate(rounds, 1):
        rates = {name: result["jobs_per_s"] for name, result in results.items()}
        vs_db.append(rates["CAO gateway"] / rates["Celery chain + row/step"])
        vs_plain.append(rates["CAO gateway"] / rates["plain Celery chain"])
        print(
            f"{number:<7}"
            + "".join(f"{rate:>19.1f} jobs/s" for rate in rates.values())
            + f"{vs_db[-1]:>11.2f}x{vs_plain[-1]:>8.2f}x"
        )
    print(f"gateway / chain+DB  = {statistics.median(vs_db):.2f}x median (target >= 1.0)")
    print(f"gateway / plain     = {statistics.median(vs_plain):.2f}x median (target >= 0.7)")
    print(
        f"sequential hand-off, commit -> the next step's work runs, "
        f"{args.sequential} jobs one at a time per round:"
    )
    gateway = {"jobs/s (median of rounds)": _median_rate(rounds, "CAO gateway")}
    for label, key in (
        ("same queue (in the worker)", "handoff_same_queue_ms"),
        ("across queues (via broker)", "handoff_across_queues_ms"),
    ):
        samples = [ms for results in rounds for ms in results["CAO gateway"][key]]
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        print(f"  {label:<28} p50 {p50:.1f} ms, p99 {p99:.1f} ms (target p50 <= 5 ms)")
        gateway[f"hand-off {label} p50 ms"] = p50
        gateway[f"hand-off {label} p99 ms"] = p99
    print(f"logs: {log_dir}")
    write_results(
        Results(
            benchmark="throughput",
            parameters=vars(args),
            gateway=gateway,
            baselines={
                name: {"jobs/s (median of rounds)": _median_rate(rounds, name)}
                for name in runs
                if name != "CAO gateway"
            },
            ratios={
                "jobs/s, gateway / Celery chain + row/step": statistics.median(vs_db),
                "jobs/s, gateway / plain Celery chain": statistics.median(vs_plain),
            },
            servers=servers,
            detail=[{name: r["jobs_per_s"] for name, r in results.items()} for results in rounds],
        )
    )


def _median_rate(rounds: list[dict[str, dict[str, Any]]], name: str) -> float:
    return statistics.median(results[name]["jobs_per_s"] for results in rounds)


if __name__ == "__main__":
    main()
