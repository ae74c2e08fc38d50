"""`cao services [--watch]` as a real process against the test API: its table says what
GET /api/v1/services says, with calls in flight; --watch keeps it live until Ctrl-C.
With API keys configured it takes an operator key from CAO_API_KEY."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.e2e.operator_support import key_of, secured_api
from tests.harness import CAO, wait_until

pytestmark = pytest.mark.timeout(90)

HELD = 2  # the default worker's processes: both held by a hanging `limited` call


def _cao_env(**env: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", **env}


def _row(output: str, service: str) -> list[str]:
    """The cells of `service`'s row in the services table."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if cells and cells[0] == service:
            return cells
    raise AssertionError(f"no row for {service} in:\n{output}")


@pytest.fixture
def calls_in_flight(stack: dict[str, Any]) -> Any:
    """`limited` (limit 3) hangs, and HELD jobs' calls to it are in flight."""
    api, sim = stack["api"], stack["sim"]
    sim.behave("limited", hang=True)
    ids = [
        api.post("/api/v1/jobs", json={"feature_name": "limited_job", "input_data": {}}).json()[
            "job_id"
        ]
        for _ in range(HELD)
    ]

    def held() -> dict[str, Any] | None:
        services = api.get("/api/v1/services").json()["services"]
        limited = next(s for s in services if s["name"] == "limited")
        return limited if limited["leases_in_use"] == HELD else None

    wait_until(held, 30, 0.1, "the calls to be in flight")
    yield api
    for job_id in ids:
        api.post(f"/api/v1/jobs/{job_id}/cancel")


def test_services_prints_the_live_table(calls_in_flight: Any, api_server: str) -> None:
    api = calls_in_flight
    done = subprocess.run(
        [*CAO, "services", "--url", api_server],
        env=_cao_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    services = {s["name"]: s for s in api.get("/api/v1/services").json()["services"]}
    # The hanging calls hold the worker, so nothing moves: the API's answer now is the
    # one the command printed.
    assert _row(done.stdout, "limited") == ["limited", "default", "3", f"{HELD}/3", "0", "0"]
    for name in ("prompt_enhancer", "video_gen_v2", "metered"):
        service = services[name]
        in_use = f"{service['leases_in_use']}/{service['limit']}"
        assert _row(done.stdout, name)[:4] == [
            name,
            service["queue"],
            str(service["limit"]),
            in_use,
        ]
    queue, _depth, routed = _row(done.stdout, "heavy")  # the queues table
    assert "video_gen_v2" in routed, queue


def test_services_watch_refreshes_until_ctrl_c(calls_in_flight: Any, api_server: str) -> None:
    proc = subprocess.Popen(
        [*CAO, "services", "--watch", "--interval", "0.5", "--url", api_server],
        env=_cao_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # a few refreshes
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert _row(out, "limited")[3] == f"{HELD}/3", out


def test_services_takes_the_operator_key_from_the_environment(
    env: dict[str, str], log_dir: Any
) -> None:
    with secured_api(env, log_dir) as url:
        refused = subprocess.run(
            [*CAO, "services", "--url", url],
            env=_cao_env(CAO_API_KEY=key_of("client_a")),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "403" in refused.stderr, refused.stderr
        allowed = subprocess.run(
            [*CAO, "services", "--url", url],
            env=_cao_env(CAO_API_KEY=key_of("operator")),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert _row(allowed.stdout, "prompt_enhancer")[:3] == ["prompt_enhancer", "default", "50"]
