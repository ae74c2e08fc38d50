"""Job creation through the API: N `POST /api/v1/jobs` from C concurrent clients
against the gateway's API, side by side with a FastAPI endpoint that only sends one
Celery message (benchmarks/plain_enqueue_app.py), on the same machine and Redis in the
same run. No worker consumes the queue: this measures what taking a job costs.

Reported per run: requests per second and the server process's CPU per request, and
the gateway's ratios to the baseline (medians over rounds, each round in another
order: the machine's speed drifts).

    python -m benchmarks.job_creation [--jobs 1000] [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from benchmarks.common import (
    add_run_options,
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
  idle: {kind: http, url: "http://127.0.0.1:9/idle", queue: nobody, concurrency: 3}
features:
  one_call: {steps: [idle]}
"""
BODY = {"feature_name": "one_call", "input_data": {"prompt": "a short text"}}


@dataclass(frozen=True)
class Result:
    per_s: float
    cpu_ms: float  # the server process's CPU per request


def _serve(name: str, argv: list[str], env: dict[str, str], logs: Path, port: int) -> Proc:
    proc = Proc(name, argv, env, logs)
    wait_until(lambda: port_open(port), 60, 0.1, name)
    wait_until_idle(proc.pid)
    return proc


def _post_all(url: str, jobs: int, clients: int) -> None:
    def one_client(count: int) -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(count):
                client.post(url, json=BODY).raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one_client, [jobs // clients] * clients))


def _measure(proc: Proc, url: str, args: argparse.Namespace) -> Result:
    _post_all(url, 20, 1)  # connections, caches and compiled statements warm
    server = psutil.Process(proc.pid)

    def cpu() -> float:
        return sum(
            p.cpu_times().user + p.cpu_times().system
            for p in [server, *server.children(recursive=True)]
        )

    cpu_before, started = cpu(), time.perf_counter()
    _post_all(url, args.jobs, args.clients)
    elapsed, used = time.perf_counter() - started, cpu() - cpu_before
    requests = args.jobs // args.clients * args.clients
    return Result(per_s=requests / elapsed, cpu_ms=used / requests * 1000)


def _run(
    name: str,
    argv: list[str],
    path: str,
    args: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    port: int,
) -> Result:
    """Serve `argv` on `port`, time the POSTs to `path`, stop it."""
    proc = _serve(name, argv, env, logs, port)
    try:
        return _measure(proc, f"http://127.0.0.1:{port}{path}", args)
    finally:
        proc.stop()


def run_gateway(args: argparse.Namespace, env: dict[str, str], logs: Path) -> Result:
    port = free_port()
    argv = [python(), "-m", "app.cli", "api", "--port", str(port)]
    return _run("gateway-api", argv, "/api/v1/jobs", args, env, logs, port)


def run_plain(args: argparse.Namespace, env: dict[str, str], logs: Path) -> Result:
    port = free_port()
    argv = [
        python(),
        "-m",
        "uvicorn",
        "benchmarks.plain_enqueue_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return _run("plain-api", argv, "/jobs", args, env, logs, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    add_run_options(parser, redis_db=14)
    args = parser.parse_args()

    logs, catalog = run_folder(CATALOG)
    with scratch_environment(args.redis_db, CAO_CATALOG=str(catalog)) as env:
        from app.migrate import upgrade_head

        upgrade_head()
        servers = server_versions(env)
        runs = {
            "plain": lambda env: run_plain(args, env, logs),
            "gateway": lambda env: run_gateway(args, env, logs),
        }
        rounds = run_rounds(runs, args.rounds, env)

    print(f"\n{args.jobs} POSTs from {args.clients} clients (nothing consumes the queue)")
    print(f"{'round':<7}{'run':<34}{'requests/s':>12}{'server CPU ms/request':>24}")
    names = {"plain": "FastAPI endpoint + send_task", "gateway": "CAO gateway POST /api/v1/jobs"}
    for number, results in enumerate(rounds, 1):
        for key, r in results.items():
            print(f"{number:<7}{names[key]:<34}{r.per_s:>12.0f}{r.cpu_ms:>24.2f}")
    rate = statistics.median(rs["gateway"].per_s / rs["plain"].per_s for rs in rounds)
    cost = statistics.median(rs["gateway"].cpu_ms / rs["plain"].cpu_ms for rs in rounds)
    print(f"gateway / plain: {rate:.2f}x the requests per second, {cost:.2f}x the CPU per request")
    print(f"logs: {logs}")

    def medians(key: str) -> dict[str, float]:
        return {
            "requests/s (median of rounds)": statistics.median(rs[key].per_s for rs in rounds),
            "server CPU ms/request (median of rounds)": statistics.median(
                rs[key].cpu_ms for rs in rounds
            ),
        }

    write_results(
        Results(
            benchmark="job_creation",
            parameters=vars(args),
            gateway=medians("gateway"),
            baselines={names["plain"]: medians("plain")},
            ratios={"requests/s, gateway / plain": rate, "CPU per request, gateway / plain": cost},
            servers=servers,
            detail=[{key: vars(r) for key, r in rs.items()} for rs in rounds],
        )
    )


if __name__ == "__main__":
    main()
