"""What tracing costs a worker: the throughput benchmark's W1 (jobs of 4 no-op python
steps through one worker) and its same-queue step hand-off, with tracing off (no OTLP
endpoint: the default) and on (every step attempt a span, exported over OTLP/HTTP to a
receiver in this process), in one run.

Off, tracing is one check of a module global per step attempt and per job created: the
code without it cannot run here, so that cost is timed on its own (timeit of the calls
the hot path makes with tracing off) and set against the measured time of a step.

On, the jobs are created inside a span, as the API creates them inside its `POST /jobs`
span, so each stores a trace context that its step spans join. The two modes run in
rounds, in another order each round; the ratios are the medians over rounds. Besides
jobs/s, the worker's CPU per step (its processes' CPU time over the jobs, the spans'
export included): on a shared machine the rate moves with everything else running,
the CPU a step takes much less.

    python -m benchmarks.tracing_overhead [--jobs 300] [--concurrency 4] [--sequential 20]
                                          [--rounds 3] [--redis-db 11]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import add_run_options, percentile, python, run_rounds, scratch_environment
from benchmarks.results import Results, server_versions, write_results
from benchmarks.throughput import _all_completed, _create, _handoffs_ms, _one_at_a_time, _worker
from tests.e2e.otlp_receiver import OtlpReceiver
from tests.harness import wait_until

OFF, ON = "tracing off", "tracing on"


def _off_path_us() -> float:
    """Microseconds a step attempt and its job's creation spend on tracing while it is
    off: `step_span` entered and left, and `job_trace_context`."""
    from app.tracing import job_trace_context, step_span

    def one() -> None:
        with step_span(None, job_id="j", step_index=0, step_name="s", attempt=1, service="s"):
            pass
        job_trace_context()

    number = 200_000
    return min(timeit.repeat(one, number=number, repeat=5)) / number * 1e6


def _trace_the_submitter(endpoint: str) -> Any:
    """Tracing on in this process, which creates the jobs as the API would; returns its
    tracer. The environment is this process's only for the call: the workers of the
    tracing-off runs get none of it."""
    from app.config import get_settings
    from app.tracing import configure_tracing

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    get_settings.cache_clear()
    try:
        configure_tracing("cao-bench-submitter")
    finally:
        del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
        get_settings.cache_clear()
    from opentelemetry import trace

    return trace.get_tracer("benchmark")


def _idle_cpu_rate(pid: int, seconds: float = 1.0) -> float:
    """CPU seconds per second the worker spends with nothing to do (polling the broker)."""
    before = common.cpu_seconds(pid)
    time.sleep(seconds)
    return (common.cpu_seconds(pid) - before) / seconds


def _exported(receiver: OtlpReceiver, after: int) -> int:
    return len([s for s in receiver.spans()[after:] if s.service == "cao-worker"])


def run_mode(
    traced: bool, args: argparse.Namespace, env: dict[str, str], receiver: OtlpReceiver, tracer: Any
) -> dict[str, Any]:
    from worker.celery_app import celery_app

    # Batches go out every 200 ms, not 5 s: the spans of the jobs timed are exported
    # (and their export counted) within moments of the last job, not seconds later.
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    otel = otel if traced else {}
    argv = [python(), "-m", "app.cli", "worker", "-Q", "bench", "-c", str(args.concurrency)]
    argv += ["--loglevel", "WARNING"]
    log_dir = Path(env["BENCH_LOG_DIR"])
    worker = _worker(
        argv, "traced-worker" if traced else "worker", {**env, **otel}, log_dir, celery_app
    )
    spans_before = len(receiver.spans())
    # Jobs created with tracing on store the current span's context, as under POST /jobs.
    creating = (
        tracer.start_as_current_span("POST /api/v1/jobs") if traced else contextlib.nullcontext()
    )
    try:
        with creating:
            idle = _idle_cpu_rate(worker.pid)
            cpu_before, started = common.cpu_seconds(worker.pid), time.perf_counter()
            ids = _create(args.jobs)
            wait_until(lambda: _all_completed(ids), 600, 0.1, "jobs")
            done = time.perf_counter()
            # The last spans go out within OTEL_BSP_SCHEDULE_DELAY: their export is the
            # worker's work too. What it spends idle meanwhile is not.
            if traced:
                wait_until(lambda: _exported(receiver, spans_before) >= 4 * args.jobs, 60, 0.1)
            waited = time.perf_counter() - done
            cpu_used = common.cpu_seconds(worker.pid) - cpu_before - idle * waited
            elapsed = done - started
            sequential = _one_at_a_time(args.sequential, "four_noops")
    finally:
        worker.stop()  # exports the spans still batched
    exported = _exported(receiver, spans_before)
    return {
        "jobs_per_s": args.jobs / elapsed,
        "worker_cpu_ms_per_step": cpu_used / (4 * args.jobs) * 1000,
        "handoff_ms": _handoffs_ms(sequential),
        "step_spans_per_job": exported / (args.jobs + args.sequential),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sequential", type=int, default=20, help="jobs for the hand-off")
    add_run_options(parser, redis_db=11)
    args = parser.parse_args()

    off_us = _off_path_us()  # before anything here turns tracing on
    log_dir = tempfile.mkdtemp(prefix="cao-bench-")
    receiver = OtlpReceiver()
    try:
        with scratch_environment(args.redis_db, BENCH_LOG_DIR=log_dir) as env:
            from app.catalog import current_catalog
            from app.db import init_db
            from app.jobs.warm_up import prepare_job_creation
            from app.migrate import upgrade_head

            upgrade_head()
            servers = server_versions(env)
            init_db()
            prepare_job_creation(current_catalog())
            tracer = _trace_the_submitter(receiver.endpoint)
            runs = {
                OFF: lambda env: run_mode(False, args, env, receiver, tracer),
                ON: lambda env: run_mode(True, args, env, receiver, tracer),
            }
            run_mode(False, args, env, receiver, tracer)  # warm the database and caches
            rounds = run_rounds(runs, args.rounds, env)
    finally:
        from app.tracing import shutdown_tracing

        shutdown_tracing()  # the submitter's spans, while the receiver still listens
        receiver.stop()
    _report(args, rounds, off_us, servers, log_dir)


def _report(
    args: argparse.Namespace,
    rounds: list[dict[str, dict[str, Any]]],
    off_us: float,
    servers: dict[str, str],
    log_dir: str,
) -> None:
    def median(mode: str, key: str) -> float:
        return statistics.median(results[mode][key] for results in rounds)

    def handoff(mode: str) -> tuple[float, float]:
        samples = [ms for results in rounds for ms in results[mode]["handoff_ms"]]
        return percentile(samples, 50), percentile(samples, 99)

    rate = statistics.median(r[ON]["jobs_per_s"] / r[OFF]["jobs_per_s"] for r in rounds)
    cpu = statistics.median(
        r[ON]["worker_cpu_ms_per_step"] / r[OFF]["worker_cpu_ms_per_step"] for r in rounds
    )
    # Off: the share of a step's time (at the measured rate, all worker processes
    # together) that its tracing calls take.
    step_us = 1e6 / (median(OFF, "jobs_per_s") * 4)
    figures: dict[str, dict[str, float]] = {}
    print(f"\n{args.jobs} jobs x 4 no-op steps, worker concurrency {args.concurrency}")
    for mode in (OFF, ON):
        p50, p99 = handoff(mode)
        figures[mode] = {
            "jobs/s (median of rounds)": median(mode, "jobs_per_s"),
            "worker CPU ms per step (median of rounds)": median(mode, "worker_cpu_ms_per_step"),
            "hand-off same queue p50 ms": p50,
            "hand-off same queue p99 ms": p99,
            "step spans exported per job": median(mode, "step_spans_per_job"),
        }
        print(f"  {mode}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures[mode].items()))
    figures[OFF]["tracing calls per step attempt, us"] = off_us
    ratios = {
        "worker CPU per step, tracing on / tracing off": cpu,
        "jobs/s, tracing on / tracing off": rate,
        "hand-off p50, tracing on / tracing off": figures[ON]["hand-off same queue p50 ms"]
        / figures[OFF]["hand-off same queue p50 ms"],
        "tracing off: its calls' share of a step's time": off_us / step_us,
    }
    for name, value in ratios.items():
        print(f"  {name}: {value:.4g}")
    print(f"logs: {log_dir}")
    write_results(
        Results(
            benchmark="tracing_overhead",
            parameters=vars(args),
            # No plain-Celery baseline: the same gateway with tracing off is the baseline.
            gateway={
                f"{mode}: {name}": v for mode in (OFF, ON) for name, v in figures[mode].items()
            },
            baselines={},
            ratios=ratios,
            servers=servers,
            detail=[
                {m: {k: v for k, v in r[m].items() if k != "handoff_ms"} for m in (OFF, ON)}
                for r in rounds
            ],
        )
    )


if __name__ == "__main__":
    main()
