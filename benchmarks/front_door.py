"""The front door: how fast `POST /api/v1/jobs` takes jobs and how soon their first step
runs, side by side with bare Celery in one run, rounds alternating.

1-2. `wrk` (2 threads, 100 connections, 10 s, a POST body from a small Lua script)
     against `cao api` (PostgreSQL and Redis, no worker: the queue is deleted after each
     run) with 1 and with 2 processes, and against a FastAPI endpoint that only calls
     `send_task` (benchmarks/plain_enqueue_app.py) under uvicorn with as many processes:
     requests/s, p50, p99, non-2xx answers and socket errors.
3.   One job at a time (`--sequential`): submit -> first step running (the moment its
     work runs) and submit -> last step done, p50 and p99, the gateway's jobs created as
     the API creates them (in this process) against `apply_async` of a plain Celery
     chain of 4 no-op tasks; one worker of `--concurrency` processes each.
4.   `--jobs` (1000) jobs x 4 no-op python steps: jobs/s, against the plain chain
     (benchmarks/throughput.py's runs).

    python -m benchmarks.front_door [--label before] [--rounds 3] [--duration 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import throughput
from benchmarks.common import (
    add_run_options,
    cpu_seconds,
    percentile,
    python,
    run_folder,
    run_rounds,
    scratch_environment,
    wait_until_idle,
)
from benchmarks.results import Results, server_versions, write_results
from tests.harness import Proc, free_port, port_open, wait_until

CATALOG = """\
services:
  noop: {kind: python, target: "benchmarks.steps:stamped", queue: bench, concurrency: 1000}
  idle: {kind: http, url: "http://127.0.0.1:9/idle", queue: nobody, concurrency: 3}
features:
  four_noops: {steps: [noop, noop, noop, noop]}
  one_call: {steps: [idle]}
"""
UNCONSUMED_QUEUE = "nobody"
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{"feature_name": "one_call", "input_data": {"prompt": "a short text"}}'
wrk.headers["Content-Type"] = "application/json"
"""
SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
# How often a job run one at a time is polled for its end: not faster, or the gateway's
# poll (two queries) takes CPU from the worker being timed (2 cores). The latencies
# come from the runs' own timestamps, not from this wait.
POLL_S = 0.02
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class Load:
    per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_ms: float = 0.0  # the server's CPU (every process) per request


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> Load:
    """The figures of `wrk --latency`'s summary."""
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(
        per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]),
        p99_ms=_ms(percentiles["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def _load(argv: list[str], path: str, env: dict[str, str], args: argparse.Namespace) -> Load:
    """Serve `argv` (given its port), warm it, run wrk against `path`, stop it."""
    port = free_port()
    proc = Proc(Path(argv[2]).name, [*argv, "--port", str(port)], env, args.logs)
    try:
        wait_until(lambda: port_open(port), 60, 0.1, "API")
        wait_until_idle(proc.pid)
        url = f"http://127.0.0.1:{port}{path}"
        wrk = ["wrk", "-t2", "-c100", "--latency", "-s", str(args.script), url]
        # Connections, caches and compiled statements warm (every process of the server).
        subprocess.run([*wrk[:4], "-d2", *wrk[4:]], check=True, capture_output=True)
        cpu_before = cpu_seconds(proc.pid)
        done = subprocess.run(
            [*wrk[:4], f"-d{args.duration}", *wrk[4:]], check=True, capture_output=True, text=True
        )
        cpu_used = cpu_seconds(proc.pid) - cpu_before
        (args.logs / f"wrk-{time.monotonic_ns()}.txt").write_text(done.stdout)
        load = parse_wrk(done.stdout)
        requests = load.per_s * args.duration
        return dataclasses.replace(load, cpu_ms=cpu_used / requests * 1000 if requests else 0.0)
    finally:
        proc.stop()
        _forget_queue(env)


def _forget_queue(env: dict[str, str]) -> None:
    import redis

    redis.Redis.from_url(env["REDIS_URL"]).delete(UNCONSUMED_QUEUE)


def gateway_load(processes: int, args: argparse.Namespace) -> Callable[[dict[str, str]], Load]:
    argv = [python(), "-m", "app.cli", "api", "--workers", str(processes)]
    return lambda env: _load(argv, "/api/v1/jobs", env, args)


def plain_load(processes: int, args: argparse.Namespace) -> Callable[[dict[str, str]], Load]:
    argv = [python(), "-m", "uvicorn", "benchmarks.plain_enqueue_app:app"]
    argv += ["--workers", str(processes), "--log-level", "warning"]
    return lambda env: _load(argv, "/jobs", env, args)


def _gateway_latencies(count: int) -> dict[str, list[float]]:
    """Jobs one at a time: submit -> step 0's work ran, submit -> step 3 committed."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.models import JobStep

    first, last = [], []
    for _ in range(count):
        submitted = time.time()
        job = throughput._create(1)
        wait_until(lambda job=job: throughput._all_completed(job), 60, POLL_S, "job")
        with session_scope() as session:
            rows = dict(
                session.execute(
                    select(JobStep.step_index, JobStep).where(JobStep.job_id == job[0])
                ).all()
            )
        first.append((rows[0].output["ran_at"] - submitted) * 1000)
        last.append((rows[3].finished_at.timestamp() - submitted) * 1000)
    return {"first_ms": first, "last_ms": last}


def run_gateway(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    from app.catalog import current_catalog
    from app.db import init_db
    from app.jobs.warm_up import prepare_job_creation
    from worker.celery_app import celery_app

    init_db()
    prepare_job_creation(current_catalog())  # this process stands in for a running API
    argv = [python(), "-m", "app.cli", "worker", "-Q", "bench", "-c", str(args.concurrency)]
    worker = throughput._worker(
        [*argv, "--loglevel", "WARNING"], "gateway-worker", env, args.logs, celery_app
    )
    try:
        latencies = _gateway_latencies(args.sequential)
        started = time.perf_counter()
        ids = throughput._create(args.jobs)
        wait_until(lambda: throughput._all_completed(ids), 900, 0.1, "gateway jobs")
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
    return {**latencies, "jobs_per_s": args.jobs / elapsed}


def _chain_latencies(count: int, env: dict[str, str]) -> dict[str, list[float]]:
    import redis
    from celery import chain

    from benchmarks import chain_app as bench

    client = redis.Redis.from_url(env["REDIS_URL"])
    first, last = [], []
    for _ in range(count):
        run_id = uuid.uuid4().hex
        signatures = [bench.stamped.s(None, 0, False, run_id)]
        signatures += [bench.stamped.s(i, i == 3, run_id) for i in range(1, 4)]
        submitted = time.time()
        chain(*signatures).apply_async()
        key = bench.stamps_key(run_id)
        wait_until(lambda key=key: client.hexists(key, "3"), 60, POLL_S, "chain")
        stamps = {int(k): float(v) for k, v in client.hgetall(key).items()}
        first.append((stamps[0] - submitted) * 1000)
        last.append((stamps[3] - submitted) * 1000)
    return {"first_ms": first, "last_ms": last}


def run_chain(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    from benchmarks import chain_app as bench

    argv = [python(), "-m", "celery", "-A", "benchmarks.chain_app:chain_app", "worker"]
    argv += ["-Q", "chain", "-c", str(args.concurrency), "--loglevel", "WARNING"]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    worker = throughput._worker(argv, "chain-worker", env, args.logs, bench.chain_app)
    try:
        latencies = _chain_latencies(args.sequential, env)
    finally:
        worker.stop()
    rate = throughput.run_chain(args.jobs, args.concurrency, env, args.logs, write_rows=False)
    return {**latencies, "jobs_per_s": rate["jobs_per_s"]}


LOADS = {
    "gateway, 1 process": ("gateway", 1),
    "bare, 1 process": ("bare", 1),
    "gateway, 2 processes": ("gateway", 2),
    "bare, 2 processes": ("bare", 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default="", help="added to the results file's name")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sequential", type=int, default=30, help="jobs one at a time")
    parser.add_argument("--only", help="run only the runs whose name contains this")
    add_run_options(parser, redis_db=14)
    args = parser.parse_args()
    args.logs, catalog = run_folder(CATALOG)
    args.script = args.logs / "post.lua"
    args.script.write_text(WRK_SCRIPT)

    runs: dict[str, Callable[[dict[str, str]], Any]] = {}
    for name, (side, processes) in LOADS.items():
        make = gateway_load if side == "gateway" else plain_load
        runs[name] = make(processes, args)
    runs["gateway, steps"] = lambda env: run_gateway(args, env)
    runs["plain chain, steps"] = lambda env: run_chain(args, env)
    if args.only:
        runs = {name: run for name, run in runs.items() if args.only in name}
    with scratch_environment(args.redis_db, CAO_CATALOG=str(catalog)) as env:
        from app.migrate import upgrade_head

        upgrade_head()
        servers = server_versions(env)
        rounds = run_rounds(runs, args.rounds, env)
    report(args, rounds, servers)


def _median(rounds: list[dict[str, Any]], run: str, figure: str) -> float:
    return statistics.median(asdict(r[run])[figure] for r in rounds)


def _ratio(rounds: list[dict[str, Any]], a: str, b: str, figure: str) -> float:
    return statistics.median(asdict(r[a])[figure] / asdict(r[b])[figure] for r in rounds)


def _load_figures(rounds: list[dict[str, Any]], name: str) -> dict[str, float]:
    return {
        "requests/s": _median(rounds, name, "per_s"),
        "p50 ms": _median(rounds, name, "p50_ms"),
        "p99 ms": _median(rounds, name, "p99_ms"),
        "server CPU ms per request": _median(rounds, name, "cpu_ms"),
        "non-2xx (sum of rounds)": sum(r[name].non_2xx for r in rounds),
        "socket errors (sum of rounds)": sum(r[name].socket_errors for r in rounds),
    }


def _step_figures(rounds: list[dict[str, Any]], name: str) -> dict[str, float]:
    first = [ms for r in rounds for ms in r[name]["first_ms"]]
    last = [ms for r in rounds for ms in r[name]["last_ms"]]
    return {
        "submit -> first step running p50 ms": percentile(first, 50),
        "submit -> first step running p99 ms": percentile(first, 99),
        "submit -> last step done p50 ms": percentile(last, 50),
        "submit -> last step done p99 ms": percentile(last, 99),
        "jobs/s (median of rounds)": statistics.median(r[name]["jobs_per_s"] for r in rounds),
    }


def report(args: argparse.Namespace, rounds: list[dict[str, Any]], servers: dict[str, str]) -> None:
    ran = set(rounds[0])
    figures = {name: _load_figures(rounds, name) for name in LOADS if name in ran}
    ratios: dict[str, float] = {}
    for processes in ("1 process", "2 processes"):
        gateway, bare = f"gateway, {processes}", f"bare, {processes}"
        if {gateway, bare} <= ran:
            rate = _ratio(rounds, gateway, bare, "per_s")
            ratios[f"1. requests/s, gateway / bare, {processes}"] = rate
            ratios[f"2. p99, gateway / bare, {processes}"] = _ratio(rounds, gateway, bare, "p99_ms")
    steps = ("gateway, steps", "plain chain, steps")
    figures.update({name: _step_figures(rounds, name) for name in steps if name in ran})
    if set(steps) <= ran:
        gateway, chain = (figures[name] for name in steps)
        for figure in ("submit -> first step running p50 ms", "submit -> last step done p50 ms"):
            ratios[f"3. {figure}, gateway / plain chain"] = gateway[figure] / chain[figure]
        ratios["4. jobs/s, gateway / plain chain"] = statistics.median(
            r[steps[0]]["jobs_per_s"] / r[steps[1]]["jobs_per_s"] for r in rounds
        )
    for name, values in figures.items():
        print(f"{name:<24}" + ", ".join(f"{k} {v:.1f}" for k, v in values.items()))
    for name, value in ratios.items():
        print(f"{name:<60} {value:.2f}x")
    print(f"logs: {args.logs}")
    parameters = {k: v for k, v in vars(args).items() if k not in ("logs", "script")}
    write_results(
        Results(
            benchmark="front_door" + (f"-{args.label}" if args.label else ""),
            parameters=parameters,
            gateway={
                f"{name}: {k}": v
                for name, fs in figures.items()
                if "gateway" in name
                for k, v in fs.items()
            },
            baselines={name: fs for name, fs in figures.items() if "gateway" not in name},
            ratios=ratios,
            servers=servers,
            detail=[
                {k: asdict(v) if isinstance(v, Load) else v for k, v in r.items()} for r in rounds
            ],
        )
    )


if __name__ == "__main__":
    main()
