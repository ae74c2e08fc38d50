"""Fixtures of the end-to-end tests: the gateway's own processes, shared by the run.

`simulators` serves the simulated services at the run's SIM_URL, `workers` starts a
`cao worker` per queue on demand, `api_server` is one `cao api`; `stack` is all three
ready for a job of the default features. The database and Redis they use are the
run's (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.harness import CAO, Proc, Simulators, Workers, free_port


@pytest.fixture(scope="session")
def simulators(env: dict[str, str], log_dir: Path) -> Iterator[Simulators]:
    port = urlsplit(env["SIM_URL"]).port
    assert port is not None, env["SIM_URL"]
    proc = Proc("simulators", [*CAO, "simulators", "--port", str(port)], env, log_dir)
    proc.wait_for_port(port, 30)
    sims = Simulators(env["SIM_URL"])
    yield sims
    proc.stop()


@pytest.fixture
def sim(simulators: Simulators) -> Simulators:
    simulators.reset()
    return simulators


@pytest.fixture(scope="session")
def workers(env: dict[str, str], log_dir: Path, migrated: str) -> Iterator[Workers]:
    pool = Workers(env, log_dir)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def api_server(env: dict[str, str], log_dir: Path, migrated: str) -> Iterator[str]:
    port = free_port()
    proc = Proc("api", [*CAO, "api", "--port", str(port)], env, log_dir)
    proc.wait_for_port(port, 30)
    yield f"http://127.0.0.1:{port}"
    proc.stop()


@pytest.fixture
def api(api_server: str) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=api_server, timeout=10) as client:
        yield client


@pytest.fixture
def stack(sim: Simulators, workers: Workers, api: Any) -> dict[str, Any]:
    """Simulators, a worker per default queue and the API, all running."""
    workers.ensure("default", "medium", "heavy")
    return {"sim": sim, "workers": workers, "api": api}
