"""Runs chaos scenarios against one gateway on private servers and prints one table:
per scenario, jobs, lost, steps committed twice, the most calls in flight against the
limit, recovery p50/p99, events missed by a subscriber; the full run writes it to
benchmarks/results/ (`python -m benchmarks.chaos [--only NAME ...] [--short]`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.chaos import clients, outages, processes
from benchmarks.chaos.ledger import Outcome, Row, Subscriber, judge
from benchmarks.chaos.sizes import SHORT, Sizes
from benchmarks.chaos.stack import SETTINGS, ChaosStack, chaos_stack
from benchmarks.results import Results, server_versions
from benchmarks.results import write_results as write_results_file
from tests.e2e.netns_link import netns_available

Scenario = Callable[[ChaosStack, Sizes], Outcome]
SCENARIOS: dict[str, Scenario] = {
    "downstream_faults": clients.downstream_faults,
    "duplicate_deliveries": processes.duplicate_deliveries,
    "websocket_clients": clients.websocket_clients,
    "worker_sigstop": processes.worker_sigstop,
    "worker_sigkill": processes.worker_sigkill,
    "three_beats": processes.three_beats,
    "redis_restarts": outages.redis_restarts,
    "postgres_restarts": outages.postgres_restarts,
    "worker_cut_off": outages.cut_off_worker,
    "schemathesis": clients.schemathesis,
}
HEADER = (
    "scenario",
    "jobs",
    "lost",
    "committed twice",
    "most in flight / limit",
    "recovery p50 s",
    "recovery p99 s",
    "missed events",
    "faults",
    "notes",
)


def describe(name: str, sizes: Sizes) -> str:
    return {
        "downstream_faults": "downstream: 30 % 5xx, timeouts, 429 + Retry-After",
        "duplicate_deliveries": "every step's message sent again through the broker",
        "websocket_clients": f"{sizes.ws_clients} WebSocket clients coming and going",
        "worker_sigstop": "worker SIGSTOP past 2 x lease_ttl_s, then SIGCONT",
        "worker_sigkill": f"worker SIGKILL x{sizes.kills} during a {sizes.kill_jobs}-job run",
        "three_beats": "three Beats at once (and workers killed)",
        "redis_restarts": f"Redis restarted x{sizes.redis_restarts}",
        "postgres_restarts": f"PostgreSQL restarted x{sizes.pg_restarts}",
        "worker_cut_off": "worker in a network namespace cut off mid-step",
        "schemathesis": f"schemathesis, {sizes.schemathesis_s:g} s",
    }[name]


def run_scenario(name: str, stack: ChaosStack, sizes: Sizes) -> Row:
    print(f"chaos: {name} ...", flush=True)
    started = time.monotonic()
    with Subscriber(stack.api_url, stack.last_event_id()) as subscriber:
        outcome = SCENARIOS[name](stack, sizes)
        row = judge(name, stack, outcome, subscriber)
    row.detail["seconds"] = round(time.monotonic() - started, 1)
    print(f"chaos: {name}: {row}", flush=True)
    return row


def notes(row: Row) -> str:
    """The scenario's own figure: what it did, and how often the subscriber reconnected."""
    detail = row.detail
    said = {
        "worker_sigkill": lambda: ", ".join(f"{n} {kind}" for kind, n in detail["kills"].items()),
        "duplicate_deliveries": lambda: f"{detail['duplicates_sent']} duplicates sent",
        "downstream_faults": lambda: f"{detail['failed_calls']} failed calls",
        "websocket_clients": lambda: f"{detail['connections']} connections",
        "schemathesis": lambda: (
            f"{detail.get('operations', '?')} operations, "
            f"{detail.get('failures', '?')} failures, {detail.get('errors', '?')} errors"
        ),
    }.get(row.scenario)
    parts = [said()] if said else []
    if detail.get("subscriber_reconnects"):
        parts.append(f"subscriber reconnected {detail['subscriber_reconnects']}x")
    return "; ".join(parts) or "-"


def table(rows: Sequence[Row], sizes: Sizes) -> tuple[tuple[object, ...], ...]:
    def cell(value: float | None) -> object:
        return "-" if value is None else value

    lines: list[tuple[object, ...]] = [HEADER]
    for row in rows:
        lines.append(
            (
                describe(row.scenario, sizes),
                row.jobs,
                row.lost,
                row.committed_twice,
                f"{row.max_in_flight} / {row.limit}",
                cell(row.recover_p50_s),
                cell(row.recover_p99_s),
                row.missed,
                row.faults or "-",
                notes(row),
            )
        )
    return tuple(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--short", action="store_true", help="the test suite's sizes")
    args = parser.parse_args(argv)
    sizes = SHORT if args.short else Sizes()
    if not netns_available() and "worker_cut_off" in args.only:
        print("chaos: worker_cut_off needs root, iproute2 and socat; skipped", flush=True)
        args.only.remove("worker_cut_off")
    log_dir = Path(tempfile.mkdtemp(prefix="cao-chaos-"))
    rows: list[Row] = []
    with chaos_stack(log_dir) as stack:
        os.environ.update(stack.env)  # duplicate deliveries go through this process's broker
        from app.config import get_settings

        get_settings.cache_clear()
        for name in args.only:
            rows.append(run_scenario(name, stack, sizes))
        servers = server_versions({"BENCH_PG_URL": stack.pg_url, "REDIS_URL": stack.redis.url})
    lines = table(rows, sizes)
    for line in lines:
        print(" | ".join(str(cell) for cell in line))
    if not args.short:  # the test suite's sizes prove the code, not the figures
        write_results(rows, lines, sizes, servers)
    print(f"chaos: logs in {log_dir}")
    return 0 if all(row.held for row in rows) else 1


def write_results(
    rows: Sequence[Row],
    lines: tuple[tuple[object, ...], ...],
    sizes: Sizes,
    servers: dict[str, str],
) -> None:
    write_results_file(
        Results(
            benchmark="chaos",
            parameters={**dataclasses.asdict(sizes), **SETTINGS},
            gateway={
                f"{row.scenario} {figure}": float(getattr(row, figure))
                for row in rows
                for figure in ("lost", "committed_twice", "missed")
            },
            baselines={},
            ratios={},
            detail=[dataclasses.asdict(row) for row in rows],
            table=lines,
            servers=servers,
        )
    )
