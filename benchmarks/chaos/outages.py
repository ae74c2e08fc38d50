"""Scenarios that take the gateway's servers away: Redis restarted, PostgreSQL
restarted (cleanly and as a crash), and a worker cut off the network mid-step in a
network namespace of its own."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from benchmarks.chaos.ledger import Fault, Outcome
from benchmarks.chaos.processes import paced, steady_load, steps_in_flight
from benchmarks.chaos.sizes import Sizes
from benchmarks.chaos.stack import ChaosStack
from tests.e2e.netns_link import NetnsLink, netns_link
from tests.harness import CAO, Proc, wait_until


def _outage(
    stack: ChaosStack,
    sizes: Sizes,
    count: int,
    down_s: float,
    stop: Callable[[int], None],
    start: Callable[[], None],
) -> Outcome:
    """`count` times: jobs running, the server stopped, jobs created meanwhile (they
    are accepted: the gateway keeps what it cannot send), the server back after
    `down_s`. Recovery counts from the server's return."""
    steady_load(stack, sizes.latency_ms)
    jobs: list[str] = []
    faults = []
    for number in range(count):
        before = paced(stack, sizes.outage_jobs, 2)
        hit = steps_in_flight(stack)
        stop(number)
        with ThreadPoolExecutor(1) as pool:
            during = pool.submit(stack.submit, max(1, sizes.outage_jobs // 4), 2)
            time.sleep(down_s)
            start()
            faults.append(Fault(time.time(), hit + [(job, 0) for job in during.result()]))
            jobs += during.result()
        jobs += before.result()
        stack.wait_finished(jobs, 120)
    return Outcome(jobs, faults)


def redis_restarts(stack: ChaosStack, sizes: Sizes) -> Outcome:
    return _outage(
        stack,
        sizes,
        sizes.redis_restarts,
        sizes.redis_down_s,
        lambda _: stack.redis.stop(),
        stack.redis.start,
    )


def postgres_restarts(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """Every other restart is a crash (`immediate`: no checkpoint, sessions cut)."""
    modes = ("fast", "immediate")
    return _outage(
        stack,
        sizes,
        sizes.pg_restarts,
        sizes.pg_down_s,
        lambda number: stack.postgres.stop(modes[number % 2]),
        stack.postgres.start,
    )


def cut_off_worker(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """A worker in its own namespace, reaching Redis, PostgreSQL and the services only
    through a relay namespace (tests/e2e/netns_link.py), is the only running consumer
    of its queue; mid-step the link goes down (packets vanish, no reset) and a standby
    worker here, held with SIGSTOP until then, goes on; the link comes back once every
    job finished: the cut-off worker's late results must change nothing.
    Recovery counts from the cut."""
    steady_load(stack, sizes.latency_ms)
    stack.sim.behave("isolated_call", latency_ms=1500)
    jobs: list[str] = []
    faults = []
    pg, redis = stack.postgres.port, stack.redis.port
    sim = int(stack.sim.base_url.rsplit(":", 1)[1])
    with netns_link() as link:
        # The worker (and the service URLs its jobs carry) use the usual addresses.
        for port in (pg, redis, sim):
            link.on_loopback(port)
        isolated = _isolated_worker(stack, link, 0)  # boots beside the standby
        standby = stack.workers.start("isolated", concurrency=4, name="standby")
        try:
            for number in range(sizes.cuts):
                if number:
                    isolated = _isolated_worker(stack, link, number)
                jobs += _cut_once(stack, sizes, isolated, link, standby, faults)
        finally:
            standby.signal_group(signal.SIGCONT)
            link.restore()
            stack.workers.stop("standby")
    return Outcome(jobs, faults)


def _isolated_worker(stack: ChaosStack, link: NetnsLink, number: int) -> Proc:
    return stack.start_process(
        f"isolated-{number}", link.in_client(*CAO, "worker", "-Q", "isolated", "-c", "2")
    )


def _cut_once(
    stack: ChaosStack,
    sizes: Sizes,
    isolated: Proc,
    link: NetnsLink,
    standby: Proc,
    faults: list[Fault],
) -> list[str]:
    standby.signal_group(signal.SIGSTOP)
    try:
        isolated.wait_for_log("ready.", 60)
        batch = stack.submit(sizes.cut_jobs, 4, feature="isolated_job")
        wait_until(
            lambda: stack.sim.stats("isolated_call")["in_flight"] >= 1,
            30,
            0.05,
            "a call of the isolated worker",
        )
        hit = stack.running_steps()
        link.cut()
        faults.append(Fault(time.time(), hit))
    finally:
        standby.signal_group(signal.SIGCONT)
    stack.wait_finished(batch, 120)
    link.restore()
    # The cut-off worker's connections time out and its late results arrive.
    time.sleep(sizes.cut_settle_s)
    isolated.stop(5)
    return batch
