"""How big each scenario runs: the full run's sizes (the issue's) and the test suite's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    kill_jobs: int = 1000
    kills: int = 100
    kill_interval_s: float = 2.0
    stops: int = 3
    stop_jobs: int = 60
    redis_restarts: int = 5
    redis_down_s: float = 3.0
    pg_restarts: int = 3
    pg_down_s: float = 3.0
    outage_jobs: int = 40
    downstream_jobs: int = 300
    duplicate_jobs: int = 200
    beat_jobs: int = 300
    beat_kills: int = 6
    ws_clients: int = 1000
    ws_jobs: int = 100
    cuts: int = 3
    cut_jobs: int = 12
    cut_settle_s: float = 8.0
    schemathesis_s: float = 300.0
    # Latency of every simulated call (ms), so that steps are in flight when a fault hits.
    latency_ms: float = 100.0


SHORT = Sizes(
    kill_jobs=30,
    kills=3,
    kill_interval_s=1.5,
    stops=1,
    stop_jobs=12,
    redis_restarts=1,
    pg_restarts=1,
    outage_jobs=10,
    downstream_jobs=20,
    duplicate_jobs=10,
    beat_jobs=20,
    beat_kills=1,
    ws_clients=40,
    ws_jobs=8,
    cuts=1,
    cut_jobs=6,
    cut_settle_s=2.0,
    schemathesis_s=4.0,
)
