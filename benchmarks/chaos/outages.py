"""Scenarios that take the gateway's servers away: Redis restarted, PostgreSQL
restarted (cleanly and as a crash), and a worker cut off the network mid-step in a
network namespace of its own."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from benchmarks.chaos.ledger import Fault, Outcome
from benchmarks.chaos.processes import paced, steady_load, steps_in_flight
from benchmarks.chaos.sizes import Sizes
from benchmarks.chaos.stack import ChaosStack
from tests.e2e.tcp_proxy import TcpProxy
from tests.harness import CAO, Proc, wait_until

FORWARD = [sys.executable, "-m", "benchmarks.chaos.forward"]


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


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@contextlib.contextmanager
def _namespace() -> Iterator[tuple[str, str, Callable[[bool], None]]]:
    """A network namespace joined to this one by a veth pair on a private /30: (its
    name, this side's address, a switch for the link)."""
    suffix = uuid.uuid4().hex[:6]
    namespace, outer, inner = f"cao-{suffix}", f"cao{suffix}o", f"cao{suffix}i"
    subnet = f"10.232.{random.randint(1, 250)}"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", namespace)
        _ip("addr", "add", f"{subnet}.1/30", "dev", outer)
        _ip("link", "set", outer, "up")
        _ip("-n", namespace, "addr", "add", f"{subnet}.2/30", "dev", inner)
        _ip("-n", namespace, "link", "set", inner, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")

        def link(up: bool) -> None:
            _ip("link", "set", outer, "up" if up else "down")

        yield namespace, f"{subnet}.1", link
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def cut_off_worker(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """A worker in its own namespace, reaching Redis, PostgreSQL and the services only
    over a veth link, is the only running consumer of its queue; mid-step the link goes
    down (packets vanish, no reset) and a standby worker here, held with SIGSTOP until
    then, goes on; the link comes back once every job finished: the cut-off worker's
    late results must change nothing. Recovery counts from the cut."""
    steady_load(stack, sizes.latency_ms)
    stack.sim.behave("isolated_call", latency_ms=1500)
    jobs: list[str] = []
    faults = []
    pg, redis = stack.postgres.port, stack.redis.port
    sim = int(stack.sim.base_url.rsplit(":", 1)[1])
    with _namespace() as (namespace, address, link):
        # This side: a proxy on the link's address to each server; the namespace's
        # side: a forwarder from the server's loopback port to that proxy, so that the
        # worker (and the service URLs its jobs carry) use the usual addresses.
        proxies = [TcpProxy(("127.0.0.1", port), host=address) for port in (pg, redis, sim)]
        routes = [
            f"{port}:{address}:{proxy.port}"
            for port, proxy in zip((pg, redis, sim), proxies, strict=True)
        ]
        forwarder = stack.start_process(
            "forwarder", ["ip", "netns", "exec", namespace, *FORWARD, *routes]
        )
        isolated = _isolated_worker(stack, namespace, 0)  # boots beside the standby
        standby = stack.workers.start("isolated", concurrency=4, name="standby")
        try:
            forwarder.wait_for_log("forwarding", 30)
            for number in range(sizes.cuts):
                if number:
                    isolated = _isolated_worker(stack, namespace, number)
                jobs += _cut_once(stack, sizes, isolated, link, standby, faults)
        finally:
            standby.signal_group(signal.SIGCONT)
            link(True)
            forwarder.stop(5)
            stack.workers.stop("standby")
            for proxy in proxies:
                proxy.cut()
    return Outcome(jobs, faults)


def _isolated_worker(stack: ChaosStack, namespace: str, number: int) -> Proc:
    return stack.start_process(
        f"isolated-{number}",
        ["ip", "netns", "exec", namespace, *CAO, "worker", "-Q", "isolated", "-c", "2"],
    )


def _cut_once(
    stack: ChaosStack,
    sizes: Sizes,
    isolated: Proc,
    link: Callable[[bool], None],
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
        link(False)
        faults.append(Fault(time.time(), hit))
    finally:
        standby.signal_group(signal.SIGCONT)
    stack.wait_finished(batch, 120)
    link(True)
    # The cut-off worker's connections time out and its late results arrive.
    time.sleep(sizes.cut_settle_s)
    isolated.stop(5)
    return batch
