"""Scenarios that attack the gateway's own processes: workers SIGKILLed (whole or one
pool process), a worker frozen past twice its leases' TTL, the same step delivered
again and again through the broker, and three Beats sweeping at once."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import psutil

from benchmarks.chaos.ledger import Fault, Outcome
from benchmarks.chaos.sizes import Sizes
from benchmarks.chaos.stack import SERVICES, ChaosStack
from tests.harness import Proc, wait_until

LEASE_TTL_S = 3.0  # the chaos catalog's (benchmarks/chaos/stack.py)


def steady_load(stack: ChaosStack, latency_ms: float) -> None:
    stack.sim.reset()
    for service in SERVICES:
        stack.sim.behave(service, latency_ms=latency_ms, jitter_ms=latency_ms / 2)


def paced(stack: ChaosStack, total: int, seconds: float) -> Future[list[str]]:
    """Create `total` jobs spread over about `seconds`, in the background."""

    def run() -> list[str]:
        ids: list[str] = []
        batches = max(1, int(seconds))
        for number in range(batches):
            started = time.monotonic()
            ids += stack.submit(total * (number + 1) // batches - len(ids), at_once=4)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        return ids

    return ThreadPoolExecutor(1).submit(run)


def steps_in_flight(stack: ChaosStack, timeout: float = 5.0) -> list[tuple[str, int]]:
    """The steps in flight, once there are some (or none after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not (running := stack.running_steps()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def _worker_procs(stack: ChaosStack) -> list[Proc]:
    return [proc for proc in stack.workers.procs.values() if proc.alive()]


def _pool_children(proc: Proc) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return []


class Killer:
    """SIGKILLs in turn: a whole worker (restarted at once, as a supervisor would) while
    another is up to serve, else one pool process mid-step (its worker forks another).
    A worker still booting is left alone, so that the run goes on between kills."""

    READY = "ready."

    def __init__(self, stack: ChaosStack, rng: random.Random) -> None:
        self.stack, self.rng = stack, rng
        # How many "ready." lines each worker's log holds once it is up again.
        self.readies: dict[int, int] = {}
        self.kinds = {"worker": 0, "pool process": 0}

    def up(self) -> list[Proc]:
        return [
            proc
            for proc in _worker_procs(self.stack)
            if proc.log_text().count(self.READY) >= self.readies.get(proc.pid, 1)
        ]

    def kill(self, whole: bool) -> None:
        up = wait_until(self.up, 120, 0.2, "a worker up to kill")
        victim = self.rng.choice(up)
        children = _pool_children(victim)
        if (whole and len(up) > 1) or not children:
            ready = victim.log_text().count(self.READY) + 1
            victim.kill()
            victim.restart()
            self.readies[victim.pid] = ready
            self.kinds["worker"] += 1
        else:
            self.rng.choice(children).send_signal(signal.SIGKILL)
            self.kinds["pool process"] += 1


def worker_sigkill(stack: ChaosStack, sizes: Sizes) -> Outcome:
    steady_load(stack, sizes.latency_ms)
    killer = Killer(stack, random.Random(23))
    pending = paced(stack, sizes.kill_jobs, sizes.kills * sizes.kill_interval_s)
    faults = []
    for number in range(sizes.kills):
        time.sleep(sizes.kill_interval_s)
        hit = stack.running_steps()
        killer.kill(whole=number % 2 == 0)
        faults.append(Fault(time.time(), hit))
    jobs = pending.result()
    stack.wait_finished(jobs, 600)
    return Outcome(jobs, faults, detail={"kills": killer.kinds})


def worker_sigstop(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """Freeze one worker past 2 x lease_ttl_s while jobs run, then let it go on: its
    steps were taken over; its late results must change nothing. Recovery counts from
    the freeze (the rest of the gateway must route around it while it lasts)."""
    steady_load(stack, sizes.latency_ms)
    jobs: list[str] = []
    faults = []
    for _ in range(sizes.stops):
        pending = paced(stack, sizes.stop_jobs, 2)
        time.sleep(1.0)
        hit = steps_in_flight(stack)
        victim = _worker_procs(stack)[0]
        victim.signal_group(signal.SIGSTOP)
        faults.append(Fault(time.time(), hit))
        try:
            time.sleep(2 * LEASE_TTL_S + 1)
        finally:
            victim.signal_group(signal.SIGCONT)
        jobs += pending.result()
        stack.wait_finished(jobs, 120)
    time.sleep(2.0)  # late results of the thawed worker arrive, to be fenced out
    return Outcome(jobs, faults)


def _live_deliveries(stack: ChaosStack, jobs: Sequence[str]) -> list[tuple[str, int, int, str]]:
    rows = stack.query(
        "SELECT job_id::text, step_index, fence, step_name FROM job_step "
        "WHERE job_id = ANY(%s::uuid[]) AND status IN ('QUEUED', 'RUNNING', 'RETRYING', "
        "'WAITING_FOR_SLOT', 'COMPLETED')",
        list(jobs),
    )
    return [(str(a), int(b), int(c), str(d)) for a, b, c, d in rows]


def _send_again(deliveries: Sequence[tuple[str, int, int, str]]) -> int:
    """Each delivery again, as the gateway sends it (naming its service) and plain."""
    from app.jobs.dispatch import enqueue_step

    for job_id, step_index, fence, service in deliveries:
        enqueue_step(job_id, step_index, fence, "chaos", service=service)
        enqueue_step(job_id, step_index, fence, "chaos")
    return 2 * len(deliveries)


def duplicate_deliveries(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """Every step's message sent twice more while its job runs, and once more after
    every job ended: a step must still be committed once."""
    steady_load(stack, sizes.latency_ms)
    jobs = stack.submit(sizes.duplicate_jobs, at_once=4)
    sent = 0
    while stack.unfinished(jobs) and sent < 40 * sizes.duplicate_jobs:
        sent += _send_again(_live_deliveries(stack, jobs))
        time.sleep(0.3)
    stack.wait_finished(jobs, 120)
    sent += _send_again(_live_deliveries(stack, jobs))
    time.sleep(3.0)  # the late duplicates are consumed
    return Outcome(jobs, detail={"duplicates_sent": sent})


def three_beats(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """Two more Beats beside the stack's: every sweep runs three times as often, racing
    itself, while workers are killed so that the sweeps have lost steps to put back."""
    steady_load(stack, sizes.latency_ms)
    extra = [stack.start_beat(f"beat-{number}") for number in (2, 3)]
    try:
        killer = Killer(stack, random.Random(7))
        pending = paced(stack, sizes.beat_jobs, sizes.beat_kills * 3)
        faults = []
        for _ in range(sizes.beat_kills):
            time.sleep(2.0)
            hit = steps_in_flight(stack)
            killer.kill(whole=True)  # a whole worker's steps need a sweep
            faults.append(Fault(time.time(), hit))
        jobs = pending.result()
        stack.wait_finished(jobs, 300)
    finally:
        for proc in extra:
            proc.stop(5)
    return Outcome(jobs, faults, detail={"beats": 3})
