"""What watching the gateway costs: the throughput benchmark's W1 (jobs of 4 no-op python
steps, then the step hand-off of jobs run one at a time) run "observed" and "bare" in
one run, in rounds, in another order each round.

- observed: task events on from the start (TASK_EVENTS=true in the workers, and in
  this process, which creates the jobs as the API would and so sends their first
  "task-sent" event); real Flower (`celery flower`, its own process) consuming them;
  `/metrics` scraped every second during the whole run, in this process through the
  collector `GET /metrics` renders (HTTP and auth left out: benchmarks/metrics_scrape.py),
  which folds the event log as an API replica would; tracing off (no OTLP endpoint).
- bare: TASK_EVENTS=false, no Flower, no scrapes, tracing off.

Same code, same servers. Reported: jobs/s and the workers' CPU per step (their
processes' CPU time over the timed jobs: on a shared machine the rate moves with
everything else running, the CPU a step takes much less), and the hand-off (a step's
commit to the moment the next step's work runs) on one queue and across two queues,
p50 and p99; each as observed / bare, the median of the rounds' ratios with their
range. Flower's own CPU is reported beside them: it runs on the same cores here, in a
deployment often on another host. Before the rounds, 200 jobs and an ANALYZE settle
the scratch database (throughput.py `_settle_database`).

    python -m benchmarks.observability_overhead [--jobs 300] [--concurrency 4]
                                                [--sequential 30] [--rounds 3] [--redis-db 10]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    add_run_options,
    cpu_seconds,
    percentile,
    run_rounds,
    scratch_environment,
    wait_until_idle,
)
from benchmarks.results import Results, server_versions, write_results

OBSERVED, BARE = "observed", "bare"
TARGET = 0.05  # the overhead allowed: 5 %
FLOWER_AUTH = ("bench", "flower-bench")
HANDOFFS = (
    ("same queue", "handoff_same_queue_ms"),
    ("across queues", "handoff_across_queues_ms"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--sequential", type=int, default=30, help="jobs one at a time, per hand-off kind"
    )
    add_run_options(parser, redis_db=10)
    return parser.parse_args(argv)


@contextlib.contextmanager
def _flower(env: dict[str, str], log_dir: Path) -> Iterator[tuple[int, Any]]:
    """Flower against the run's broker, as an operator runs it: (its pid, an HTTP client)."""
    import httpx

    from tests.harness import Proc, free_port

    port = free_port()
    argv = [sys.executable, "-m", "celery", f"--broker={env['REDIS_URL']}", "flower"]
    argv += ["--address=127.0.0.1", f"--port={port}", "--basic_auth=" + ":".join(FLOWER_AUTH)]
    proc = Proc("flower", argv, env, log_dir)
    try:
        proc.wait_for_port(port, 60)
        wait_until_idle(proc.pid)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", auth=FLOWER_AUTH, timeout=30
        ) as client:
            yield proc.pid, client
    finally:
        proc.stop()


def run_config(
    observed: bool, args: argparse.Namespace, env: dict[str, str], log_dir: Path
) -> dict[str, Any]:
    from app.broker import get_celery
    from benchmarks.metrics_scrape import _with_scraper
    from benchmarks.throughput import run_gateway

    # This process creates the jobs: with TASK_EVENTS=true the API sends "task-sent".
    get_celery().conf.task_send_sent_event = observed
    workers_env = {**env, "TASK_EVENTS": "true" if observed else "false"}

    def gateway() -> dict[str, Any]:
        return run_gateway(args.jobs, args.concurrency, workers_env, log_dir, args.sequential)

    if not observed:
        return gateway()
    from app.events.metrics_fold import fold_events

    # What the rounds before left to fold is folded now, untimed: the scrapes of this
    # run fold its own events, as a replica scraped every second does.
    fold_events()
    with _flower(env, log_dir) as (flower_pid, flower):
        flower_before = cpu_seconds(flower_pid)
        result = _with_scraper(gateway)
        flower_cpu = cpu_seconds(flower_pid) - flower_before
        tasks = flower.get("/api/tasks", params={"taskname": "cao.run_step"}).json()
    steps = 4 * (args.jobs + 2 * args.sequential)
    return {
        **result,
        "flower_cpu_ms_per_step": flower_cpu / steps * 1000,
        "step_tasks_seen_by_flower": len(tasks),
    }


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Both configurations' figures and the ratios observed / bare, from the rounds'
    results (run_config's, by configuration name)."""

    def median(config: str, key: str) -> float:
        return statistics.median(r[config][key] for r in rounds)

    def pooled(config: str, key: str, q: float) -> float:
        return percentile([ms for r in rounds for ms in r[config][key]], q)

    figures: dict[str, dict[str, float]] = {}
    for config in (OBSERVED, BARE):
        figures[config] = {
            "jobs/s (median of rounds)": median(config, "jobs_per_s"),
            "worker CPU ms per step (median of rounds)": median(config, "worker_cpu_ms_per_step"),
        }
        for label, key in HANDOFFS:
            figures[config][f"hand-off {label} p50 ms"] = pooled(config, key, 50)
            figures[config][f"hand-off {label} p99 ms"] = pooled(config, key, 99)
    for key, name in (
        ("flower_cpu_ms_per_step", "Flower CPU ms per step (median of rounds)"),
        ("step_tasks_seen_by_flower", "step tasks Flower saw per round (median)"),
        ("scrapes", "scrapes per round (median)"),
        ("scrape_ms_max", "slowest scrape ms (median of rounds)"),
    ):
        figures[OBSERVED][name] = median(OBSERVED, key)

    per_round: dict[str, list[float]] = {
        "jobs/s": [r[OBSERVED]["jobs_per_s"] / r[BARE]["jobs_per_s"] for r in rounds],
        "worker CPU per step": [
            r[OBSERVED]["worker_cpu_ms_per_step"] / r[BARE]["worker_cpu_ms_per_step"]
            for r in rounds
        ],
    }
    for label, key in HANDOFFS:
        per_round[f"hand-off {label} p50"] = [
            percentile(r[OBSERVED][key], 50) / percentile(r[BARE][key], 50) for r in rounds
        ]
    ratios: dict[str, float] = {}
    for name, values in per_round.items():
        ratios[f"{name}, observed / bare (median of rounds)"] = statistics.median(values)
        ratios[f"{name}, observed / bare (lowest round)"] = min(values)
        ratios[f"{name}, observed / bare (highest round)"] = max(values)
    for label, _ in HANDOFFS:
        ratios[f"hand-off {label} p99, observed / bare (all rounds' samples)"] = (
            figures[OBSERVED][f"hand-off {label} p99 ms"]
            / figures[BARE][f"hand-off {label} p99 ms"]
        )
    # Overhead: what observing takes off the rate, and adds to a step's CPU and hand-off.
    overhead = {
        "jobs/s": 1 - ratios["jobs/s, observed / bare (median of rounds)"],
        "worker CPU per step": ratios["worker CPU per step, observed / bare (median of rounds)"]
        - 1,
        **{
            f"hand-off {label} p50": ratios[
                f"hand-off {label} p50, observed / bare (median of rounds)"
            ]
            - 1
            for label, _ in HANDOFFS
        },
    }
    return {
        "figures": figures,
        "ratios": ratios,
        "overhead": overhead,
        "within_target": all(value <= TARGET for value in overhead.values()),
    }


def _detail(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
    """Per round, each configuration's figures without the hand-off samples."""
    return [
        {
            config: {k: v for k, v in result.items() if not k.startswith("handoff")}
            for config, result in r.items()
        }
        for r in rounds
    ]


def results_of(
    args: argparse.Namespace, rounds: list[dict[str, dict[str, Any]]], servers: dict[str, str]
) -> Results:
    summary = summarise(rounds)
    return Results(
        benchmark="observability_overhead",
        parameters={**vars(args), "scrape interval s": 1.0, "tracing": "off (no OTLP endpoint)"},
        gateway={f"{OBSERVED}: {k}": v for k, v in summary["figures"][OBSERVED].items()},
        # The baseline is the same code with task events, Flower and scrapes off.
        baselines={BARE: summary["figures"][BARE]},
        ratios={
            **summary["ratios"],
            **{
                f"overhead, {k} (target <= {TARGET:.0%})": v for k, v in summary["overhead"].items()
            },
        },
        servers=servers,
        detail={"rounds": _detail(rounds), "within_target": summary["within_target"]},
    )


def main() -> None:
    args = parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="cao-bench-"))
    with scratch_environment(args.redis_db) as env:
        from app.migrate import upgrade_head
        from benchmarks.throughput import _settle_database

        upgrade_head()
        servers = server_versions(env)
        _settle_database(args.concurrency, env, log_dir)
        rounds = run_rounds(
            {
                OBSERVED: lambda env: run_config(True, args, env, log_dir),
                BARE: lambda env: run_config(False, args, env, log_dir),
            },
            args.rounds,
            env,
        )
    results = results_of(args, rounds, servers)
    print(f"\n{args.jobs} jobs x 4 no-op steps, worker concurrency {args.concurrency}")
    for name, value in results.ratios.items():
        print(f"  {name}: {value:.4g}")
    verdict = "within" if results.detail["within_target"] else "OVER"
    print(f"overhead {verdict} the {TARGET:.0%} target; logs: {log_dir}")
    write_results(results)


if __name__ == "__main__":
    main()
