"""Cancel stops the call: cancelling a job one second into a 20-second call interrupts
it (an http service sees its connection close, a python step under prefork stops as
a timeout stops it), its slot is free within 2 s, the job is CANCELLED and its next
step is never called. A client cancels its own tenant's jobs, not another's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.operator_support import (
    assert_error,
    event_types,
    keyed_client,
    secured_api,
    service_usage,
    submit,
    wait_for_step,
)
from tests.harness import wait_for_job, wait_until

pytestmark = pytest.mark.slow

SLOT_FREE_WITHIN_S = 2.0
CALL_S = 20


@pytest.fixture
def one_process(stack: dict[str, Any], db: Any) -> dict[str, Any]:
    """The stack and a worker of one prefork process for the `interruptible` queue: a
    call left running would hold it, and the next job would wait for it."""
    stack["workers"].start("interruptible", concurrency=1)
    return stack


def _cancel_one_second_in(api: httpx.Client, job_id: str) -> float:
    """Wait until step 0 has run a second, cancel the job; returns when (epoch s)."""
    wait_for_step(api, job_id, 0, "RUNNING")
    time.sleep(1)
    cancelled_at = time.time()
    response = api.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["steps"][0]["status"] == "CANCELLED"
    return cancelled_at


def _assert_stopped(api: httpx.Client, sim: Any, job_id: str, service: str, at: float) -> None:
    """The slot is free within 2 s of the cancel; the job stays CANCELLED and its next
    step is never called; the worker's one process is free for the next job at once."""
    wait_until(
        lambda: service_usage(api, service)["leases_in_use"] == 0,
        SLOT_FREE_WITHIN_S - (time.time() - at),
        0.02,
        f"the slot of {service} to be free",
    )
    assert time.time() - at < SLOT_FREE_WITHIN_S
    after = submit(api, "long_nap_job", {"seconds": 0})
    assert wait_for_job(api, after, timeout=CALL_S / 2)["status"] == "COMPLETED"

    job = api.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "CANCELLED", job
    assert [step["status"] for step in job["steps"]] == ["CANCELLED", "PENDING"]
    assert job["outputs"] == {}
    assert sim.requests("after_long", job_id) == [], "the next step was called after cancel"
    assert event_types(job_id)[-1] == "JOB_CANCELLED"


def test_cancel_closes_an_http_call_in_flight_and_frees_its_slot(one_process):
    api, sim = one_process["api"], one_process["sim"]
    sim.behave("long_call", latency_ms=CALL_S * 1000)
    job_id = submit(api, "long_call_job")
    wait_until(lambda: sim.requests("long_call", job_id), 15, message="the call in flight")

    cancelled_at = _cancel_one_second_in(api, job_id)

    call = wait_until(
        lambda: next((r for r in sim.requests("long_call", job_id) if r["ended_at"]), None),
        SLOT_FREE_WITHIN_S,
        0.02,
        "the service to see its caller go",
    )
    assert call["status"] == 499, call  # the caller closed the connection
    assert call["ended_at"] - cancelled_at < SLOT_FREE_WITHIN_S
    _assert_stopped(api, sim, job_id, "long_call", cancelled_at)
    assert len(sim.requests("long_call", job_id)) == 1, "the cancelled call was retried"


def test_cancel_interrupts_a_python_step_under_prefork(one_process):
    api, sim = one_process["api"], one_process["sim"]
    job_id = submit(api, "long_nap_job", {"seconds": CALL_S})

    cancelled_at = _cancel_one_second_in(api, job_id)

    _assert_stopped(api, sim, job_id, "long_nap", cancelled_at)


@pytest.fixture
def keyed(env, log_dir, one_process) -> Iterator[dict[str, httpx.Client]]:
    with (
        secured_api(env, log_dir) as url,
        keyed_client(url, "client_a") as client_a,
        keyed_client(url, "client_b") as client_b,
    ):
        yield {"client_a": client_a, "client_b": client_b}


def test_a_client_cancels_its_own_tenants_job_and_not_anothers(keyed, one_process):
    client_a, client_b = keyed["client_a"], keyed["client_b"]
    one_process["sim"].behave("long_call", latency_ms=CALL_S * 1000)
    job_id = submit(client_a, "long_call_job")

    assert_error(client_b.post(f"/api/v1/jobs/{job_id}/cancel"), 404, "job_not_found")
    assert client_a.get(f"/api/v1/jobs/{job_id}").json()["status"] != "CANCELLED"

    response = client_a.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CANCELLED"
    wait_until(
        lambda: service_usage(one_process["api"], "long_call")["leases_in_use"] == 0,
        10,
        message="the slot to be free",
    )
