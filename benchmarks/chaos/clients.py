"""Scenarios from outside the gateway: services that fail (5xx, timeouts, 429 with
Retry-After), a thousand WebSocket clients coming and going while jobs run, and
schemathesis sending generated requests from the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import connect

from benchmarks.chaos.ledger import Outcome
from benchmarks.chaos.processes import paced, steady_load
from benchmarks.chaos.sizes import Sizes
from benchmarks.chaos.stack import ChaosStack
from tests.event_clients import TERMINAL, ws_url
from tests.harness import CAO

FAULTY = ("chaos_call", "chaos_next")


def _script(calls: int, latency_ms: float, rng: random.Random) -> list[dict[str, Any]]:
    """`calls` answers, 30 % of them failures: 5xx, hangs past the timeout (2 s), and
    429 with Retry-After, a tenth of the calls each."""
    answers: list[dict[str, Any]] = []
    for _ in range(calls):
        draw = rng.random()
        if draw < 0.1:
            answers.append({"status": rng.choice([500, 502, 503, 504]), "delay_ms": latency_ms})
        elif draw < 0.2:
            answers.append({"status": 200, "delay_ms": 3000})
        elif draw < 0.3:
            answers.append({"status": 429, "retry_after": 0.5, "delay_ms": latency_ms})
        else:
            answers.append({"status": 200, "delay_ms": latency_ms})
    return answers


def _retry_recoveries(stack: ChaosStack, jobs: Sequence[str]) -> tuple[list[float], int]:
    """Per step with a failed call: from its first failure's end to its commit (s)."""
    failed_at: dict[tuple[str, int], float] = {}
    failures = 0
    for service in FAULTY:
        for call in stack.sim.stats(service)["requests"]:
            if call["status"] != 200 and call["ended_at"] is not None:
                failures += 1
                key = (str(call["job_id"]), int(call["step_index"]))
                failed_at[key] = min(failed_at.get(key, call["ended_at"]), call["ended_at"])
    rows = stack.query(
        "SELECT job_id::text, step_index, ts FROM job_event "
        "WHERE job_id = ANY(%s::uuid[]) AND type = 'STEP_COMPLETED'",
        list(jobs),
    )
    committed = {(job, int(index)): ts.timestamp() for job, index, ts in rows}
    times = [committed[key] - at for key, at in failed_at.items() if key in committed]
    return times, failures


def downstream_faults(stack: ChaosStack, sizes: Sizes) -> Outcome:
    stack.sim.reset()
    rng = random.Random(30)
    for service in FAULTY:
        script = _script(2 * sizes.downstream_jobs, sizes.latency_ms, rng)
        stack.sim.behave(service, latency_ms=sizes.latency_ms, script=script)
    jobs = stack.submit(sizes.downstream_jobs, at_once=4)
    stack.wait_finished(jobs, 600)
    recoveries, failures = _retry_recoveries(stack, jobs)
    return Outcome(jobs, recoveries=recoveries, detail={"failed_calls": failures})


async def _come_and_go(
    api_url: str, job_id: str, rng: random.Random, seen: list[int], stop_at: float
) -> int:
    """One client of one job: connects with `after` = the last seq it saw, reads a few
    events, leaves, comes back, until the job's end; how many times it connected."""
    visits = 0
    while time.monotonic() < stop_at:
        after = seen[-1] if seen else 0
        visits += 1
        try:
            url = ws_url(api_url, f"/ws/{job_id}?after={after}")
            async with connect(url, max_size=None, open_timeout=30, proxy=None) as ws:
                for _ in range(rng.randint(1, 4)):
                    body = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if body.get("type") == "WS_CONNECTED":
                        continue
                    seen.append(int(body["seq"]))
                    if body["type"] in TERMINAL:
                        return visits
        except Exception:  # noqa: BLE001 - a refused or dropped socket: come back later
            pass
        await asyncio.sleep(rng.uniform(0.0, 0.5))
    return visits


async def _clients(
    api_url: str, jobs: Sequence[str], count: int
) -> list[tuple[str, list[int], int]]:
    rng = random.Random(1000)
    stop_at = time.monotonic() + 300
    plans = [(jobs[number % len(jobs)], []) for number in range(count)]
    visits = await asyncio.gather(
        *(
            _come_and_go(api_url, job, random.Random(rng.random()), seen, stop_at)
            for job, seen in plans
        )
    )
    return [(job, seen, visit) for (job, seen), visit in zip(plans, visits, strict=True)]


def websocket_clients(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """Every client must have seen its job's whole log, in order, once, across its
    visits: a gap or a repeat is a missed event."""
    steady_load(stack, sizes.latency_ms * 5)  # jobs that last while clients come and go
    jobs = stack.submit(sizes.ws_jobs, at_once=4)
    results = asyncio.run(_clients(stack.api_url, jobs, sizes.ws_clients))
    stack.wait_finished(jobs, 300)
    last = dict(stack.query("SELECT id::text, last_seq FROM job WHERE id = ANY(%s::uuid[])", jobs))
    missed = 0
    for job, seen, _ in results:
        expected = list(range(1, int(last[job]) + 1))
        missed += len(set(expected) - set(seen)) + (len(seen) - len(set(seen)))
        missed += int(seen != sorted(seen))
    visits = sum(visit for _, _, visit in results)
    return Outcome(jobs, missed=missed, detail={"clients": len(results), "connections": visits})


def schemathesis(stack: ChaosStack, sizes: Sizes) -> Outcome:
    """Generated requests from the OpenAPI document for `schemathesis_s` seconds; any
    5xx is a failure (`not_a_server_error`). Meanwhile jobs run (one a second), judged
    with any that schemathesis manages to create."""
    steady_load(stack, sizes.latency_ms)
    load = paced(stack, int(sizes.schemathesis_s), sizes.schemathesis_s)
    # Jobs of the namespace scenario's feature need a consumer; it boots meanwhile.
    consumer = stack.start_process(
        "isolated-consumer", [*CAO, "worker", "-Q", "isolated", "-c", "1"]
    )
    started = time.time()
    report = stack.log_dir / f"schemathesis-{int(started)}.xml"
    argv = [
        str(_schemathesis_command()),
        "run",
        f"{stack.api_url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-time",
        str(int(sizes.schemathesis_s)),
        "--request-timeout",
        "10",
        "--workers",
        "2",
        "--seed",
        "23",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    # Run in the log folder: schemathesis keeps a cache where it runs.
    run = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=sizes.schemathesis_s + 600,
        cwd=stack.log_dir,
    )
    (stack.log_dir / "schemathesis.log").write_text(run.stdout + run.stderr)
    rows = stack.query("SELECT id::text FROM job WHERE created_at >= to_timestamp(%s)", started)
    jobs = sorted({row[0] for row in rows} | set(load.result()))
    stack.wait_finished(jobs, 120)
    consumer.stop(5)
    detail = {"schemathesis_exit": run.returncode, **_junit_counts(report)}
    return Outcome(jobs, detail=detail)


def _schemathesis_command() -> str:
    from pathlib import Path

    return str(Path(sys.executable).with_name("schemathesis"))


def _junit_counts(path: Any) -> dict[str, int]:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"operations": 0, "failures": 0, "errors": 0}
    for suite in suites:
        counts["operations"] += int(suite.get("tests", 0))
        counts["failures"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
    return counts
