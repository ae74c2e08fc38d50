"""Simulated HTTP services: deterministic stand-ins for the gateway's `kind: http` steps,
with knobs for latency, jitter, failure rate, hangs and scripted responses, and the
per-service call statistics the end-to-end tests assert on.

- schemas.py: the knobs (`Behavior`, `ScriptedResponse`), the call, the statistics out;
- outputs.py: the canned output of each default service;
- state.py: one app's behaviours, scripts and statistics, in memory;
- answers.py: answering one call;
- asgi.py: the app, its admin routes and the server behind `cao simulators`.
"""

from __future__ import annotations

from app.simulators.asgi import (
    build_simulator_server,
    create_simulator_app,
    run_simulators,
    simulated_services,
)
from app.simulators.outputs import DEFAULT_SERVICES, simulate_output
from app.simulators.schemas import Behavior, ScriptedResponse, ServiceCall

__all__ = [
    "DEFAULT_SERVICES",
    "Behavior",
    "ScriptedResponse",
    "ServiceCall",
    "build_simulator_server",
    "create_simulator_app",
    "run_simulators",
    "simulate_output",
    "simulated_services",
]
