"""The in-memory state of one simulator app: each service's behaviour, the script and
random numbers it consumes as it answers, and its call statistics.

Everything lives in one process, so the counters are exact only with a single worker;
that is the only way app/simulators/asgi.py serves the app.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field

from app.simulators.schemas import (
    CLIENT_CLOSED_STATUS,
    Behavior,
    RequestRecord,
    ScriptedResponse,
    ServiceStatsOut,
)

MAX_RECORDED_REQUESTS = 5000


@dataclass
class ServiceStats:
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    busy_seconds: float = 0.0
    first_call_at: float | None = None
    last_end_at: float | None = None
    requests: deque[RequestRecord] = field(
        default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS)
    )

    def begin(self, record: RequestRecord) -> None:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.first_call_at is None:
            self.first_call_at = record.received_at
        self.requests.append(record)

    def end(self, record: RequestRecord, busy: float) -> None:
        self.in_flight -= 1
        self.busy_seconds += busy
        self.last_end_at = record.ended_at = time.time()
        if record.status is None:
            record.status = CLIENT_CLOSED_STATUS

    def snapshot(self) -> ServiceStatsOut:
        return ServiceStatsOut(
            calls=self.calls,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            busy_seconds=self.busy_seconds,
            first_call_at=self.first_call_at,
            last_end_at=self.last_end_at,
            requests=list(self.requests),
        )


@dataclass
class ServiceRuntime:
    """What a service consumes as it answers: its remaining script and its RNG."""

    script: deque[ScriptedResponse]
    rng: random.Random


class SimulatorState:
    """Behaviours, scripts and statistics of one simulator app (in memory)."""

    def __init__(self, default_behavior: Behavior, required_api_key: str | None) -> None:
        self.initial_default = default_behavior
        self.required_api_key = required_api_key
        self._closed = False
        self._closing: asyncio.Event | None = None
        self._closing_loop: asyncio.AbstractEventLoop | None = None
        self.reset()

    def reset(self) -> None:
        self.default = self.initial_default
        self.behaviors: dict[str, Behavior] = {}
        self.runtimes: dict[str, ServiceRuntime] = {}
        self.stats: dict[str, ServiceStats] = {}

    def behavior_for(self, service: str) -> Behavior:
        return self.behaviors.get(service, self.default)

    def runtime_for(self, service: str) -> ServiceRuntime:
        runtime = self.runtimes.get(service)
        if runtime is None:
            behavior = self.behavior_for(service)
            runtime = ServiceRuntime(
                script=deque(behavior.script), rng=random.Random(f"{behavior.seed}:{service}")
            )
            self.runtimes[service] = runtime
        return runtime

    def set_behavior(self, service: str, behavior: Behavior) -> None:
        self.behaviors[service] = behavior
        self.runtimes.pop(service, None)

    def set_default(self, behavior: Behavior) -> None:
        self.default = behavior
        # Services without their own behaviour restart the new default's script.
        for service in [name for name in self.runtimes if name not in self.behaviors]:
            del self.runtimes[service]

    def stats_for(self, service: str) -> ServiceStats:
        return self.stats.setdefault(service, ServiceStats())

    def closing_event(self) -> asyncio.Event:
        """Set when the server shuts down, so hanging requests end instead of blocking it."""
        # An Event binds to one loop; an app may be driven by several (one per test).
        loop = asyncio.get_running_loop()
        if self._closing is None or self._closing_loop is not loop:
            self._closing, self._closing_loop = asyncio.Event(), loop
            if self._closed:
                self._closing.set()
        return self._closing

    def begin_shutdown(self) -> None:
        """Called on the serving loop when the server starts shutting down."""
        self._closed = True
        if self._closing is not None:
            self._closing.set()

    def api_key_ok(self, presented: str | None) -> bool:
        if self.required_api_key is None:
            return True
        return presented is not None and secrets.compare_digest(
            presented.encode(), self.required_api_key.encode()
        )
