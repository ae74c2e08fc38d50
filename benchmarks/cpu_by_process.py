"""Where a benchmark's CPU goes: run any benchmark command, sample every process on the
machine meanwhile, and print CPU use per process class (the submitting benchmark,
gateway workers, baseline workers, PostgreSQL, Redis, the simulated services) as a
timeline and as totals.

On the 2-core development machine every comparison here is CPU-bound, so the answer to
"why is this run slower" is usually "which processes took the cores, and when". The
timeline shows it per phase: for example, the lease run's slots wait while the cores
are shared with job creation, then run at full rate once submission ends.

    python -m benchmarks.cpu_by_process [--interval 0.25] [--window 0.5] -- \\
        python -m benchmarks.lease_utilisation --rounds 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psutil

from benchmarks.results import Results, write_results

GATEWAY = "gateway workers"
BASELINE = "baseline workers"
# First match wins: (class, a substring of the command line or the process name).
CLASSES = (
    ("simulators", "simulators"),
    (GATEWAY, "app.cli worker"),
    (BASELINE, "celery -A benchmarks."),
    ("benchmark", "benchmarks."),
    ("postgres", "postgres"),
    ("redis", "redis-server"),
)
OTHER = "other"


def process_class(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return OTHER
    for label, pattern in CLASSES:
        if pattern in command or pattern == name:
            return label
    return OTHER


@dataclass
class Sampler:
    """CPU seconds per class between successive samples. A process is counted from
    its first sample on (what it used before is not attributed to the run); one that
    exits between samples loses its last interval."""

    seen: dict[tuple[int, float], tuple[float, str]] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def sample(self) -> None:
        used: dict[str, float] = defaultdict(float)
        for process in psutil.process_iter():
            if process.pid == os.getpid():
                continue  # the sampler itself
            try:
                times = process.cpu_times()
                key = (process.pid, process.create_time())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total = times.user + times.system
            if key in self.seen:
                before, label = self.seen[key]
                used[label] += total - before
            else:
                label = process_class(process)
            self.seen[key] = (total, label)
        self.samples.append((time.monotonic(), dict(used)))


def print_report(sampler: Sampler, window: float) -> dict[str, float]:
    """Print the timeline and the totals; return the CPU seconds per class."""
    labels = [label for label, _ in CLASSES] + [OTHER]
    print("\nCPU in use (cores), per class and window; quiet windows left out")
    print(f"{'t s':>7}" + "".join(f"{label:>17}" for label in labels) + f"{'total':>8}")
    start = sampler.samples[0][0]
    window_start = start
    used: dict[str, float] = defaultdict(float)
    totals: dict[str, float] = defaultdict(float)
    for at, sample in sampler.samples[1:]:
        for label, seconds in sample.items():
            used[label] += seconds
            totals[label] += seconds
        if at - window_start >= window:
            span = at - window_start
            busy = sum(used.values()) / span
            if busy >= 0.15:
                row = "".join(f"{used[label] / span:>17.2f}" for label in labels)
                print(f"{window_start - start:>7.1f}{row}{busy:>8.2f}")
            window_start, used = at, defaultdict(float)
    print("\nCPU seconds over the whole command")
    for label in labels:
        print(f"  {label:<18}{totals[label]:>8.2f}")
    print(f"  {'all':<18}{sum(totals.values()):>8.2f}")
    return {label: totals[label] for label in labels}


def results(command: list[str], args: argparse.Namespace, totals: dict[str, float]) -> Results:
    """The workers' CPU as the gateway's and the baseline's figures; the rest (the
    database, Redis, the submitting benchmark) served both and belongs to the run."""
    gateway, baseline = totals[GATEWAY], totals[BASELINE]
    return Results(
        benchmark="cpu_by_process",
        parameters={"command": " ".join(command), "interval": args.interval, "window": args.window},
        gateway={"worker CPU s": gateway},
        baselines={BASELINE: {"worker CPU s": baseline}} if baseline else {},
        ratios={"worker CPU s, gateway / baseline": gateway / baseline} if baseline else {},
        whole_run={
            f"{label} CPU s": seconds
            for label, seconds in totals.items()
            if label not in (GATEWAY, BASELINE)
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--window", type=float, default=0.5, help="seconds per timeline row")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the benchmark, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the benchmark command after --")

    sampler = Sampler()
    sampler.sample()
    with subprocess.Popen(command) as benchmark:
        while benchmark.poll() is None:
            time.sleep(args.interval)
            sampler.sample()
    totals = print_report(sampler, args.window)
    write_results(results(command, args, totals))
    sys.exit(benchmark.returncode)


if __name__ == "__main__":
    main()
