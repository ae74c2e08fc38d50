"""What a scenario is judged by, read from the event log, the step records and the
simulators' own counts, never from what the gateway says about itself:

- lost: a job of the scenario that is not COMPLETED when it ends (each scenario's jobs
  can all complete: a FAILED one failed for a gateway-side reason);
- committed twice: a step with more than one STEP_COMPLETED in the log;
- in flight: the most calls a service saw at once (its simulator counts), against the
  service's limit;
- recovery: from a fault's end until every step it hit (in flight when it began, and
  not committed before it ended) is committed, p50 and p99 over the scenario's faults;
- missed: an event of the scenario's jobs in the log that a subscriber to `/ws`
  (reconnecting with `after` whenever its socket closes) never received, or a gap in a
  job's `seq`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect

from benchmarks.chaos.stack import SERVICES, ChaosStack
from benchmarks.common import percentile
from tests.event_clients import ws_url


@dataclass
class Fault:
    """One fault: when it ended (epoch seconds) and the steps it hit (job id, index)."""

    ended_at: float
    steps: list[tuple[str, int]]


@dataclass
class Outcome:
    """What a scenario did: its jobs, its faults, and anything more worth keeping."""

    jobs: list[str]
    faults: list[Fault] = field(default_factory=list)
    # Recovery times measured by the scenario itself (seconds), when faults do not fit.
    recoveries: list[float] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    # A subscriber of the scenario's own (the WebSocket scenario counts its clients').
    missed: int | None = None


@dataclass(frozen=True)
class Row:
    scenario: str
    jobs: int
    lost: int
    committed_twice: int
    max_in_flight: int
    limit: int
    recover_p50_s: float | None
    recover_p99_s: float | None
    missed: int
    faults: int
    detail: dict[str, Any]

    @property
    def held(self) -> bool:
        return self.lost == self.committed_twice == self.missed == 0 and (
            self.max_in_flight <= self.limit
        )


class Subscriber:
    """A dashboard on `/ws` for the whole scenario, in a thread of its own: every event
    it receives, by global id; it reconnects with `after` whenever its socket closes."""

    def __init__(self, api_url: str, after: int) -> None:
        self.api_url = api_url
        self.after = after
        self.ids: set[int] = set()
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                url = ws_url(self.api_url, f"/ws?after={self.after}")
                async with connect(url, max_size=None, open_timeout=10, proxy=None) as ws:
                    while not self._stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        body = json.loads(raw)
                        if isinstance(body.get("id"), int) and body.get("type") != "WS_CONNECTED":
                            self.ids.add(body["id"])
                            self.after = max(self.after, body["id"])
            except Exception:  # noqa: BLE001 - any end of the socket: reconnect
                self.reconnects += 1
                await asyncio.sleep(0.3)

    def drain(self, stack: ChaosStack, job_ids: Sequence[str], timeout: float = 30.0) -> None:
        """Wait (up to `timeout`) until it has every id of the log for `job_ids`."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and log_ids(stack, job_ids) - self.ids:
            time.sleep(0.5)


def log_ids(stack: ChaosStack, job_ids: Sequence[str]) -> set[int]:
    rows = stack.query(
        "SELECT id FROM job_event WHERE job_id = ANY(%s::uuid[]) AND id IS NOT NULL",
        list(job_ids),
    )
    return {int(row[0]) for row in rows}


def seq_gaps(stack: ChaosStack, job_ids: Sequence[str]) -> int:
    """Events missing from the log itself: per job, seqs 1..last_seq not all present."""
    rows = stack.query(
        "SELECT j.last_seq - count(e.seq) FROM job j LEFT JOIN job_event e ON e.job_id = j.id "
        "WHERE j.id = ANY(%s::uuid[]) GROUP BY j.id, j.last_seq",
        list(job_ids),
    )
    return sum(max(0, int(row[0])) for row in rows)


def _lost(stack: ChaosStack, job_ids: Sequence[str]) -> tuple[int, dict[str, int]]:
    rows = stack.query(
        "SELECT status, coalesce(error_code, '') FROM job WHERE id = ANY(%s::uuid[])",
        list(job_ids),
    )
    how: dict[str, int] = {}
    for status, code in rows:
        # Only schemathesis cancels: a cancel is the answer to a request, not a loss.
        if status not in ("COMPLETED", "CANCELLED"):
            key = f"{status}:{code}" if code else status
            how[key] = how.get(key, 0) + 1
    missing = len(set(job_ids)) - len(rows)
    if missing:
        how["no row"] = missing
    return sum(how.values()), how


def _committed_twice(stack: ChaosStack, job_ids: Sequence[str]) -> int:
    """Steps committed more than once within one run of their job: a rerun from step N
    (an operator's resume, which schemathesis may send) is new work."""
    rows = stack.query(
        "SELECT count(*) FROM (SELECT e.job_id, e.step_index, (SELECT count(*) FROM "
        "job_event r WHERE r.job_id = e.job_id AND r.type = 'JOB_RESUMED' AND r.seq < e.seq) "
        "AS run FROM job_event e WHERE e.job_id = ANY(%s::uuid[]) AND e.type = 'STEP_COMPLETED' "
        "GROUP BY 1, 2, 3 HAVING count(*) > 1) twice",
        list(job_ids),
    )
    return int(rows[0][0])


def _commits(stack: ChaosStack, faults: Sequence[Fault]) -> dict[tuple[str, int], float]:
    """When each step that a fault hit was committed (epoch seconds)."""
    jobs = sorted({job for fault in faults for job, _ in fault.steps})
    rows = stack.query(
        "SELECT job_id::text, step_index, max(ts) FROM job_event "
        "WHERE job_id = ANY(%s::uuid[]) AND type = 'STEP_COMPLETED' GROUP BY 1, 2",
        jobs,
    )
    return {(str(job), int(index)): ts.timestamp() for job, index, ts in rows}


def recovery_times(stack: ChaosStack, faults: Sequence[Fault]) -> list[float]:
    """Per fault, the time from its end until the last step it hit was committed; a
    step committed before the fault ended (its commit raced the fault) was not hit."""
    commits = _commits(stack, faults)
    times = []
    for fault in faults:
        waits = [
            commits[step] - fault.ended_at
            for step in fault.steps
            if commits.get(step, 0.0) > fault.ended_at
        ]
        if waits:
            times.append(max(waits))
    return times


def _in_flight(stack: ChaosStack) -> tuple[int, int, dict[str, int]]:
    """The most calls in flight at once over the services, and that service's limit."""
    limits = {name: _limit(stack, name) for name in SERVICES}
    seen = {name: int(stack.sim.stats(name)["max_in_flight"]) for name in SERVICES}
    worst = max(SERVICES, key=lambda name: seen[name] / limits[name])
    return seen[worst], limits[worst], seen


def _limit(stack: ChaosStack, service: str) -> int:
    import httpx

    rows = httpx.get(f"{stack.api_url}/api/v1/services", timeout=10).json()
    items = rows if isinstance(rows, list) else rows.get("services", rows.get("items", []))
    for item in items:
        if item.get("name") == service:
            return int(item["limit"])
    raise KeyError(service)


def judge(name: str, stack: ChaosStack, outcome: Outcome, subscriber: Subscriber | None) -> Row:
    jobs = outcome.jobs
    lost, how_lost = _lost(stack, jobs)
    missed = seq_gaps(stack, jobs)
    if subscriber is not None:
        subscriber.drain(stack, jobs)
        missed += len(log_ids(stack, jobs) - subscriber.ids)
    if outcome.missed is not None:
        missed += outcome.missed
    in_flight, limit, per_service = _in_flight(stack)
    recoveries = recovery_times(stack, outcome.faults) + outcome.recoveries
    detail = {**outcome.detail, "in_flight_by_service": per_service}
    detail["recoveries_s"] = sorted(round(value, 2) for value in recoveries)
    if how_lost:
        detail["lost_by_status"] = how_lost
    if subscriber is not None:
        detail["subscriber_reconnects"] = subscriber.reconnects
    return Row(
        scenario=name,
        jobs=len(jobs),
        lost=lost,
        committed_twice=_committed_twice(stack, jobs),
        max_in_flight=in_flight,
        limit=limit,
        recover_p50_s=round(percentile(recoveries, 50), 2) if recoveries else None,
        recover_p99_s=round(percentile(recoveries, 99), 2) if recoveries else None,
        missed=missed,
        faults=len(outcome.faults) or int(outcome.detail.get("faults", 0)),
        detail=detail,
    )
