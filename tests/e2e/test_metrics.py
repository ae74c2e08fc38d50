"""/metrics counts the whole deployment: a known workload run by two workers on two
queues, scraped from two API processes, gives the exact counts in both answers, and a
worker killed and restarted in between loses none of them. With keys, it takes an
operator key.

The workload's features and services are this module's own (its catalog, its queues),
so what other tests of the run did to the shared database shows in other series."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.operator_support import API_KEYS, key_of, submit
from tests.harness import CAO, Proc, Simulators, Workers, free_port, serving_api, wait_for_job

pytestmark = pytest.mark.timeout(180)

CATALOG = """
services:
  m_alpha: {kind: http, url: "${SIM_URL}/m_alpha", queue: m_a, timeout_s: 5}
  m_flaky:
    kind: http
    url: "${SIM_URL}/m_flaky"
    queue: m_a
    timeout_s: 5
    max_attempts: 3
    backoff: {initial_s: 0.1, max_s: 0.2}
  m_broken: {kind: http, url: "${SIM_URL}/m_broken", queue: m_a, timeout_s: 5}
  m_beta: {kind: http, url: "${SIM_URL}/m_beta", queue: m_b, timeout_s: 5}
  # No worker consumes its queue: its job waits until cancelled.
  m_parked: {kind: http, url: "${SIM_URL}/m_parked", queue: m_idle, timeout_s: 5}
features:
  m_pair: {steps: [m_alpha, m_beta]}
  m_retry: {steps: [m_flaky, m_beta]}
  m_fail: {steps: [m_broken]}
  m_parked_job: {steps: [m_parked]}
"""
FEATURES = ("m_pair", "m_retry", "m_fail", "m_parked_job")
SERVICES = ("m_alpha", "m_flaky", "m_broken", "m_beta", "m_parked")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Deployment:
    """Two API processes, a worker per queue and simulators, on this module's catalog."""

    def __init__(self, apis: list[httpx.Client], workers: Workers, sim: Simulators) -> None:
        self.apis = apis
        self.workers = workers
        self.sim = sim

    def start_worker(self, queue: str) -> None:
        self.workers.start(queue, name=f"metrics-{queue}")


@pytest.fixture(scope="module")
def deployment(env: dict[str, str], log_dir: Path, migrated: str):
    catalog = log_dir / "metrics-catalog.yaml"
    catalog.write_text(CATALOG)
    # Simulators of their own: they serve the services of the catalog they are given.
    port = free_port()
    own = {
        **env,
        "CAO_CATALOG": str(catalog),
        "API_KEYS": API_KEYS,
        "SIM_URL": f"http://127.0.0.1:{port}",
    }
    workers = Workers(own, log_dir)
    with contextlib.ExitStack() as stack:
        simulators = Proc(
            "simulators-metrics", [*CAO, "simulators", "--port", str(port)], own, log_dir
        )
        stack.callback(simulators.stop)
        simulators.wait_for_port(port, 30)
        apis = [stack.enter_context(serving_api(f"api-metrics-{n}", own, log_dir)) for n in (1, 2)]
        for api in apis:
            api.headers["Authorization"] = f"Bearer {key_of('operator')}"
        deployment = Deployment(apis, workers, Simulators(own["SIM_URL"]))
        deployment.start_worker("m_a")
        deployment.start_worker("m_b")
        try:
            yield deployment
        finally:
            workers.stop_all()


def scrape(api: httpx.Client) -> Samples:
    """Every sample of one /metrics answer, parsed by prometheus_client's parser."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def ours(samples: Samples) -> Samples:
    """The samples about this module's features and services."""
    return {
        key: value
        for key, value in samples.items()
        if any(v in FEATURES or v in SERVICES for _, v in key[1])
    }


def delta(after: Samples, before: Samples) -> Samples:
    return {key: value - before.get(key, 0.0) for key, value in ours(after).items()}


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _wait(api: httpx.Client, job_id: str) -> dict[str, Any]:
    return wait_for_job(api, job_id, timeout=60)


def test_metrics_count_a_known_workload_exactly_from_either_api(deployment: Deployment):
    first, second = deployment.apis
    sim = deployment.sim
    sim.behave("m_flaky", script=[{"status": 503}])
    sim.behave("m_broken", script=[{"status": 400, "body": {"error": "no"}}])
    before = scrape(first)

    done = [submit(first, "m_pair"), submit(second, "m_pair")]
    assert [_wait(first, j)["status"] for j in done] == ["COMPLETED", "COMPLETED"]
    # A crash between the two halves of the workload: the counts live in no worker.
    deployment.workers.procs.pop("metrics-m_a").kill()
    deployment.start_worker("m_a")

    done += [submit(first, "m_pair"), submit(second, "m_retry")]
    failed = submit(first, "m_fail")
    parked = submit(second, "m_parked_job")
    cancel = second.post(f"/api/v1/jobs/{parked}/cancel")
    assert cancel.status_code == 200, cancel.text
    assert [_wait(first, j)["status"] for j in done] == ["COMPLETED"] * 4
    assert _wait(first, failed)["status"] == "FAILED"

    with ThreadPoolExecutor(2) as pool:  # both replicas fold at once
        answers = list(pool.map(scrape, deployment.apis))
    counts = delta(answers[0], before)
    assert counts == delta(answers[1], before)

    created = {f: _get(counts, "cao_jobs_created_total", feature=f) for f in FEATURES}
    assert created == {"m_pair": 3, "m_retry": 1, "m_fail": 1, "m_parked_job": 1}
    finished = {
        (f, s): _get(counts, "cao_jobs_finished_total", feature=f, status=s)
        for f in FEATURES
        for s in ("COMPLETED", "FAILED", "CANCELLED")
    }
    assert {key: n for key, n in finished.items() if n} == {
        ("m_pair", "COMPLETED"): 3,
        ("m_retry", "COMPLETED"): 1,
        ("m_fail", "FAILED"): 1,
        ("m_parked_job", "CANCELLED"): 1,
    }
    attempts = {
        (s, o): _get(counts, "cao_step_attempts_total", service=s, outcome=o)
        for s in SERVICES
        for o in ("completed", "retried", "failed")
    }
    assert {key: n for key, n in attempts.items() if n} == {
        ("m_alpha", "completed"): 3,
        ("m_beta", "completed"): 4,
        ("m_flaky", "retried"): 1,
        ("m_flaky", "completed"): 1,
        ("m_broken", "failed"): 1,
    }
    calls = {"m_alpha": 3, "m_beta": 4, "m_flaky": 2, "m_broken": 1, "m_parked": 0}
    for service, n in calls.items():
        # One duration per ended call, one wait per started one (the same calls here).
        assert _get(counts, "cao_step_duration_seconds_count", service=service) == n, service
        assert _get(counts, "cao_step_wait_seconds_count", service=service) == n, service
        inf = _get(counts, "cao_step_duration_seconds_bucket", service=service, le="+Inf")
        assert inf == n, service
    for feature in FEATURES:
        jobs = sum(n for (f, _), n in finished.items() if f == feature)
        assert _get(counts, "cao_job_duration_seconds_count", feature=feature) == jobs, feature

    names = {name for name, _ in answers[0]}
    for gauge in ("cao_queue_depth", "cao_leases_in_use", "cao_lease_limit", "cao_steps_waiting"):
        assert gauge in names, gauge
    assert _get(answers[0], "cao_lease_limit", service="m_alpha") > 0
    # The cancelled job's message stays until a worker of its queue drops it.
    assert _get(answers[0], "cao_queue_depth", queue="m_idle") >= 1
    assert _get(answers[0], "cao_jobs", status="COMPLETED") >= 4


def test_metrics_take_an_operator_key(deployment: Deployment):
    url = str(deployment.apis[0].base_url.join("/metrics"))
    assert httpx.get(url).status_code == 401
    client = httpx.get(url, headers={"Authorization": f"Bearer {key_of('client_a')}"})
    assert client.status_code == 403
    assert client.json()["error"]["code"] == "operator_required"
    assert httpx.get(url, headers={"X-API-Key": key_of("operator")}).status_code == 200
