"""What watching the gateway costs: the throughput benchmark's W1 (jobs of 4 no-op python
steps, then the step hand-off of jobs run one at a time) "observed" (at two scrape
intervals) and "bare", on the same running workers and Flower, in short phases that
take turns, so that each ratio compares phases seconds apart (this shared machine's
speed swings 2-3x within minutes; phases of separate processes minutes apart measured
that swing). Each round runs the three configurations once, each round in another order.

- observed: task events on (the workers' turned on by the broadcast Flower itself
  sends, and this process's "task-sent" events, as the API's with TASK_EVENTS=true);
  real Flower (`celery flower`, its own process) consuming them; `/metrics` scraped
  every 15 s (Prometheus' default) through the phase, as a replica is scraped, beside
  the work; tracing off. A phase shorter than 15 s gets no scrape (its events are
  folded, untimed, before the next observed phase): the figures say how many scrapes
  phases got. W1 of 500 jobs lasted 5-45 s here, with the machine's load; 1200 jobs
  (the default) made every phase 19 s or longer on 2026-12-06.
- observed, scraped every second: the same, with a scrape every second through the
  phase instead (shown beside; the target is judged at the realistic interval).
- bare: task events off (the broadcast turns them off; this process sends no
  "task-sent"), no scrapes, tracing off. Flower still runs, receiving nothing but the
  workers' heartbeats, which every configuration sends.

A `cao api` process runs through every phase, as in any deployment: its event hub
numbers the log at least once a second (app/events/sequencer.py), whatever is watched.
Scrapes are real `GET /metrics` requests to it, as Prometheus sends them, each folding
the events since the last; what other phases left is folded, untimed, before an
observed phase. (Without an API process, the scrapes also numbered every event of the
phase, work the hub does in a deployment with or without metrics, and "bare" numbered
none: 2026-12-06 `observability_overhead-python-fold`, `-sql-fold-without-api` and
earlier runs.) The workers start with TASK_EVENTS=false: their pool processes send no
"task-sent" of their own, which only a hand-off across queues would (one event,
buffered, about 15 us of that process's CPU: tests/integration/test_task_event_batches.py).

Reported: jobs/s and the workers' CPU per step over each phase's W1, the API process's
CPU per step (its hub and, observed, the folds), the hand-off (a
step's commit to the moment the next step's work runs) on one queue and across two,
p50 and p99, Flower's CPU per step (also as a share of a bare step's CPU: it runs on
the same cores here, in a deployment often on another host); each as watched / bare,
the median of the rounds' ratios with their range. Before the rounds, 200 jobs and an
ANALYZE settle the scratch database (throughput.py `_settle_database`).

    python -m benchmarks.observability_overhead [--jobs 1200] [--concurrency 4]
                                                [--sequential 10] [--rounds 6] [--redis-db 10]
                                                [--label NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_seconds, percentile, wait_until_idle
from benchmarks.results import Results, server_versions, write_results

OBSERVED, SCRAPED_EVERY_SECOND, BARE = "observed", "observed, scraped every second", "bare"
WATCHED = (OBSERVED, SCRAPED_EVERY_SECOND)
CONFIGS = (*WATCHED, BARE)
# Prometheus' default interval, and every second (shown beside).
SCRAPE_INTERVAL_S = {OBSERVED: 15.0, SCRAPED_EVERY_SECOND: 1.0}
TARGET = 0.05  # the overhead allowed: 5 %
FLOWER_AUTH = ("bench", "flower-bench")
HANDOFFS = (
    ("same queue", "handoff_same_queue_ms"),
    ("across queues", "handoff_across_queues_ms"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1200, help="W1's jobs per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--sequential", type=int, default=10, help="jobs one at a time, per hand-off kind and phase"
    )
    parser.add_argument("--redis-db", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each running all")
    parser.add_argument(
        "--every-second",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the configuration scraped every second",
    )
    parser.add_argument("--label", default="", help="names the results files")
    return parser.parse_args(argv)


@contextlib.contextmanager
def _serving(
    name: str, argv: Callable[[int], list[str]], env: dict[str, str], log_dir: Path, **client: Any
) -> Iterator[tuple[int, Any]]:
    """A process serving HTTP on a free port (`argv(port)`), once it has settled:
    (its pid, an HTTP client for it)."""
    import httpx

    from tests.harness import Proc, free_port

    port = free_port()
    proc = Proc(name, argv(port), env, log_dir)
    try:
        proc.wait_for_port(port, 60)
        wait_until_idle(proc.pid)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, **client) as http:
            yield proc.pid, http
    finally:
        proc.stop()


def _flower(env: dict[str, str], log_dir: Path) -> contextlib.AbstractContextManager[Any]:
    """Flower against the run's broker, as an operator runs it, except that this run
    turns task events on and off itself."""

    def argv(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "celery", f"--broker={env['REDIS_URL']}", "flower"),
            *("--address=127.0.0.1", f"--port={port}", "--enable_events=False"),
            "--basic_auth=" + ":".join(FLOWER_AUTH),
        ]

    return _serving("flower", argv, env, log_dir, auth=FLOWER_AUTH)


def _api(env: dict[str, str], log_dir: Path) -> contextlib.AbstractContextManager[Any]:
    """`cao api` beside the workers, as deployed."""
    from tests.harness import CAO

    return _serving("api", lambda port: [*CAO, "api", "--port", str(port)], env, log_dir)


def _watch(config: str, workers: int) -> None:
    """Turn task events on or off, in the workers (the broadcast a monitor sends) and
    in this process, and leave the phase before its last batch of events."""
    from app.broker import EVENTS_FLUSH_INTERVAL_S, get_celery
    from app.events.metrics_fold import fold_events

    observed = config in WATCHED
    celery = get_celery()
    command = "enable_events" if observed else "disable_events"
    replies = celery.control.broadcast(command, reply=True, timeout=5, limit=workers)
    if len(replies) != workers:
        raise RuntimeError(f"{command}: {len(replies)} of {workers} workers answered")
    celery.conf.task_send_sent_event = observed
    time.sleep(2 * EVENTS_FLUSH_INTERVAL_S)  # the last phase's events are out
    if observed:
        fold_events()  # what other phases left: this phase's scrapes fold its own


def _phase(
    config: str, args: argparse.Namespace, workers: Any, flower_pid: int, api: tuple[int, Any]
) -> dict[str, Any]:
    from benchmarks.metrics_scrape import _with_scraper
    from benchmarks.throughput import measure_gateway

    api_pid, api_client = api
    _watch(config, len(workers))
    flower_before, api_before = cpu_seconds(flower_pid), cpu_seconds(api_pid)

    def measure() -> dict[str, Any]:
        return measure_gateway(args.jobs, args.sequential, workers)

    def scrape() -> None:
        api_client.get("/metrics").raise_for_status()

    if config in WATCHED:
        result = _with_scraper(measure, SCRAPE_INTERVAL_S[config], scrape)
    else:
        result = measure()
    steps = 4 * (args.jobs + 2 * args.sequential)
    result["flower_cpu_ms_per_step"] = (cpu_seconds(flower_pid) - flower_before) / steps * 1000
    result["api_cpu_ms_per_step"] = (cpu_seconds(api_pid) - api_before) / steps * 1000
    return result


def run_phases(
    args: argparse.Namespace, env: dict[str, str], log_dir: Path
) -> tuple[list[dict[str, dict[str, Any]]], int]:
    """The rounds' results, by configuration; and the step tasks Flower holds at the end."""
    from benchmarks.throughput import gateway_workers

    configs = CONFIGS if args.every_second else (OBSERVED, BARE)
    rounds = []
    workers_env = {**env, "TASK_EVENTS": "false"}
    with _flower(env, log_dir) as (flower_pid, flower), _api(env, log_dir) as api:
        with gateway_workers(args.concurrency, workers_env, log_dir) as workers:
            api[1].get("/metrics")  # the first scrape loads what the others reuse
            for number in range(args.rounds):
                shift = number % len(configs)
                order = configs[shift:] + configs[:shift]
                print(f"round {number + 1}/{args.rounds}: {', '.join(order)}", flush=True)
                done = {config: _phase(config, args, workers, flower_pid, api) for config in order}
                rounds.append({config: done[config] for config in configs})
        tasks = flower.get("/api/tasks", params={"taskname": "cao.run_step"}).json()
    return rounds, len(tasks)


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
        "API CPU ms per step (median of rounds)": _median(rounds, config, "api_cpu_ms_per_step"),
    }
    for label, key in HANDOFFS:
        samples = [ms for r in rounds for ms in r[config][key]]
        figures[f"hand-off {label} p50 ms"] = percentile(samples, 50)
        figures[f"hand-off {label} p99 ms"] = percentile(samples, 99)
    if config in WATCHED:
        for key, name in (
            ("flower_cpu_ms_per_step", "Flower CPU ms per step (median of rounds)"),
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
        # The API's and Flower's CPU beside the workers': their share of the gap on these
        # shared cores.
        "API CPU per step, added": [
            (r[config]["api_cpu_ms_per_step"] - r[BARE]["api_cpu_ms_per_step"])
            / r[BARE]["worker_cpu_ms_per_step"]
            for r in rounds
        ],
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
    watched = [config for config in WATCHED if config in rounds[0]]
    figures = {config: _figures(rounds, config) for config in (*watched, BARE)}
    ratios = {name: value for config in watched for name, value in _ratios(rounds, config).items()}
    for label, _ in HANDOFFS:
        for config in watched:
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
        benchmark="-".join(filter(None, ("observability_overhead", args.label))),
        parameters={
            **vars(args),
            "scrape interval": "observed: 15 s; the other: 1 s",
            "tracing": "off (no OTLP endpoint)",
        },
        gateway={
            f"{config}: {k}": v
            for config in WATCHED
            for k, v in summary["figures"].get(config, {}).items()
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
    from benchmarks.common import scratch_environment

    with scratch_environment(args.redis_db) as env:
        from app.migrate import upgrade_head
        from benchmarks.throughput import _settle_database

        upgrade_head()
        servers = server_versions(env)
        _settle_database(args.concurrency, env, log_dir)
        rounds, flower_tasks = run_phases(args, env, log_dir)
    results = results_of(args, rounds, servers)
    results.gateway["step tasks Flower holds at the end"] = flower_tasks
    print(f"\n{args.jobs} jobs x 4 no-op steps per phase, worker concurrency {args.concurrency}")
    for name, value in results.ratios.items():
        print(f"  {name}: {value:.4g}")
    verdict = "within" if results.detail["within_target"] else "OVER"
    print(f"overhead {verdict} the {TARGET:.0%} target; logs: {log_dir}")
    write_results(results)


if __name__ == "__main__":
    main()
