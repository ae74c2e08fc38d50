"""What watching the gateway costs: the throughput benchmark's W1 (jobs of 4 no-op python
steps, then the step hand-off of jobs run one at a time) run "observed" (at two scrape
intervals) and "bare" in one run, in rounds, in another order each round.

- observed: task events on from the start (TASK_EVENTS=true in the workers, and in
  this process, which creates the jobs as the API would and so sends their "task-sent"
  events); real Flower (`celery flower`, its own process) consuming them; `/metrics`
  scraped every 15 s, as Prometheus does by default, and once more as W1 ends, inside
  its timed window, so that the scrapes fold all of W1's events (a fold's cost is per
  event, whatever the interval) and a W1 shorter than 15 s still pays a whole scrape's
  fixed cost (more than its share); tracing off (no OTLP endpoint).
  Scrapes run in this process through the collector `GET /metrics` renders (HTTP and
  auth left out: benchmarks/metrics_scrape.py), folding the event log as an API
  replica would.
- observed, scraped every second: the same, with a scrape every second during the
  whole run instead (shown beside; the target is judged at a realistic interval).
- bare: TASK_EVENTS=false, no Flower, no scrapes, tracing off.

Same code, same servers. Reported: jobs/s and the workers' CPU per step (their
processes' CPU time over the timed jobs: on a shared machine the rate moves with
everything else running, the CPU a step takes much less), and the hand-off (a step's
commit to the moment the next step's work runs) on one queue and across two queues,
p50 and p99; each as observed / bare, the median of the rounds' ratios with their
range. Flower's own CPU is reported beside them, also as a share of a step's CPU in the
bare workers: it runs on the same cores here, in a deployment often on another host.
Before the rounds, 200 jobs and an ANALYZE settle the scratch database (throughput.py
`_settle_database`).

    python -m benchmarks.observability_overhead [--jobs 1000] [--concurrency 4]
                                                [--sequential 30] [--rounds 3] [--redis-db 10]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import partial
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

OBSERVED, SCRAPED_EVERY_SECOND, BARE = "observed", "observed, scraped every second", "bare"
WATCHED = (OBSERVED, SCRAPED_EVERY_SECOND)
SCRAPE_INTERVAL_S = {OBSERVED: 15.0, SCRAPED_EVERY_SECOND: 1.0}
TARGET = 0.05  # the overhead allowed: 5 %
FLOWER_AUTH = ("bench", "flower-bench")
HANDOFFS = (
    ("same queue", "handoff_same_queue_ms"),
    ("across queues", "handoff_across_queues_ms"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    # About 15 s of W1 on the 2-core machine: one scrape interval.
    parser.add_argument("--jobs", type=int, default=1000)
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
    config: str, args: argparse.Namespace, env: dict[str, str], log_dir: Path
) -> dict[str, Any]:
    from app.broker import get_celery
    from benchmarks.metrics_scrape import _scrape, _with_scraper
    from benchmarks.throughput import run_gateway

    observed = config in WATCHED
    # This process creates the jobs: with TASK_EVENTS=true the API sends "task-sent".
    get_celery().conf.task_send_sent_event = observed
    workers_env = {**env, "TASK_EVENTS": "true" if observed else "false"}
    final_scrape_ms: list[float] = []

    def scrape_once() -> None:
        started = time.perf_counter()
        _scrape()
        final_scrape_ms.append((time.perf_counter() - started) * 1000)

    def gateway() -> dict[str, Any]:
        finish = scrape_once if config == OBSERVED else None
        return run_gateway(
            args.jobs, args.concurrency, workers_env, log_dir, args.sequential, finish
        )

    if not observed:
        return gateway()
    from app.events.metrics_fold import fold_events

    # What the rounds before left to fold is folded now, untimed: the scrapes of this
    # run fold its own events, as a replica's scrapes do.
    fold_events()
    with _flower(env, log_dir) as (flower_pid, flower):
        flower_before = cpu_seconds(flower_pid)
        result = _with_scraper(gateway, SCRAPE_INTERVAL_S[config])
        flower_cpu = cpu_seconds(flower_pid) - flower_before
        tasks = flower.get("/api/tasks", params={"taskname": "cao.run_step"}).json()
    steps = 4 * (args.jobs + 2 * args.sequential)
    if final_scrape_ms:
        result["scrapes"] += 1
        result["scrape_ms_max"] = max(result["scrape_ms_max"], final_scrape_ms[0])
    return {
        **result,
        "flower_cpu_ms_per_step": flower_cpu / steps * 1000,
        "step_tasks_seen_by_flower": len(tasks),
    }


def _median(rounds: list[dict[str, dict[str, Any]]], config: str, key: str) -> float:
    return statistics.median(r[config][key] for r in rounds)


def _figures(rounds: list[dict[str, dict[str, Any]]], config: str) -> dict[str, float]:
    """One configuration's figures: medians of rounds, hand-off percentiles of all
    rounds' samples, and what watching it took (Flower's CPU, the scrapes)."""
    figures = {
        "jobs/s (median of rounds)": _median(rounds, config, "jobs_per_s"),
        "worker CPU ms per step (median of rounds)": _median(
            rounds, config, "worker_cpu_ms_per_step"
        ),
    }
    for label, key in HANDOFFS:
        samples = [ms for r in rounds for ms in r[config][key]]
        figures[f"hand-off {label} p50 ms"] = percentile(samples, 50)
        figures[f"hand-off {label} p99 ms"] = percentile(samples, 99)
    if config in WATCHED:
        for key, name in (
            ("flower_cpu_ms_per_step", "Flower CPU ms per step (median of rounds)"),
            ("step_tasks_seen_by_flower", "step tasks Flower saw per round (median)"),
            ("scrapes", "scrapes per round (median)"),
            ("scrape_ms_max", "slowest scrape ms (median of rounds)"),
        ):
            figures[name] = _median(rounds, config, key)
    return figures


def _ratios(rounds: list[dict[str, dict[str, Any]]], config: str) -> dict[str, float]:
    """`config` / bare: per round, then the median and range over rounds."""
    per_round: dict[str, list[float]] = {
        "jobs/s": [r[config]["jobs_per_s"] / r[BARE]["jobs_per_s"] for r in rounds],
        "worker CPU per step": [
            r[config]["worker_cpu_ms_per_step"] / r[BARE]["worker_cpu_ms_per_step"] for r in rounds
        ],
        # Flower's CPU beside the workers': its share of the gap on these shared cores.
        "Flower CPU per step": [
            r[config]["flower_cpu_ms_per_step"] / r[BARE]["worker_cpu_ms_per_step"] for r in rounds
        ],
    }
    for label, key in HANDOFFS:
        per_round[f"hand-off {label} p50"] = [
            percentile(r[config][key], 50) / percentile(r[BARE][key], 50) for r in rounds
        ]
    ratios: dict[str, float] = {}
    for name, values in per_round.items():
        ratios[f"{name}, {config} / bare (median of rounds)"] = statistics.median(values)
        ratios[f"{name}, {config} / bare (lowest round)"] = min(values)
        ratios[f"{name}, {config} / bare (highest round)"] = max(values)
    return ratios


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each configuration's figures, the ratios of each watched one to bare, and the
    overhead of "observed" (the realistic scrape interval) against the target."""
    figures = {config: _figures(rounds, config) for config in (*WATCHED, BARE)}
    ratios = {name: value for config in WATCHED for name, value in _ratios(rounds, config).items()}
    for label, _ in HANDOFFS:
        for config in WATCHED:
            ratios[f"hand-off {label} p99, {config} / bare (all rounds' samples)"] = (
                figures[config][f"hand-off {label} p99 ms"]
                / figures[BARE][f"hand-off {label} p99 ms"]
            )

    def median_ratio(name: str) -> float:
        return ratios[f"{name}, {OBSERVED} / bare (median of rounds)"]

    # Overhead: what observing takes off the rate, and adds to a step's CPU and hand-off.
    overhead = {
        "jobs/s": 1 - median_ratio("jobs/s"),
        "worker CPU per step": median_ratio("worker CPU per step") - 1,
        **{
            f"hand-off {label} p50": median_ratio(f"hand-off {label} p50") - 1
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
        parameters={
            **vars(args),
            "scrape interval": "observed: 15 s, and once as W1 ends; the other: 1 s",
            "tracing": "off (no OTLP endpoint)",
        },
        gateway={
            f"{config}: {k}": v for config in WATCHED for k, v in summary["figures"][config].items()
        },
        # The baseline is the same code with task events, Flower and scrapes off.
        baselines={BARE: summary["figures"][BARE]},
        ratios={
            **summary["ratios"],
            **{
                f"overhead, {OBSERVED}, {k} (target <= {TARGET:.0%})": v
                for k, v in summary["overhead"].items()
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
                config: partial(run_config, config, args, log_dir=log_dir)
                for config in (*WATCHED, BARE)
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
