"""The dashboard in a real browser: headless Chromium (selenium) against a `cao api`
guarded by keys, real workers and the simulated services. Jobs appear and finish
without a reload, also across a dropped socket; a job's page shows each step with
its attempts and duration; an operator resumes and cancels from it; the services
page follows leases under load; a client key sees its own tenant only; and no
request leaves the gateway's origin. A screenshot of each page goes to the run's log
folder (CAO_TEST_KEEP_LOGS=1 keeps it; CAO_DASHBOARD_SCREENSHOTS=docs refreshes docs/).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.dashboard_browser import Browser, require_chromium
from tests.e2e.operator_support import (
    API_KEYS,
    event_types,
    keyed_client,
    submit,
    wait_for_step,
)
from tests.harness import CAO, Proc, Simulators, free_port, wait_for_job, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

DURATION = re.compile(r"^\d+(\.\d+)? (ms|s)$|^\d+ m \d+ s$")


@dataclass(frozen=True)
class Gateway:
    """A `cao api` with the test keys, on a port of its own that a restart keeps."""

    url: str
    port: int
    proc: Proc


@pytest.fixture(scope="module")
def gateway(env, log_dir, migrated, workers) -> Iterator[Gateway]:
    require_chromium()
    workers.ensure("default", "medium")
    port = free_port()
    argv = [*CAO, "api", "--port", str(port)]
    proc = Proc("api-dashboard", argv, {**env, "API_KEYS": API_KEYS}, log_dir)
    try:
        proc.wait_for_port(port, 30)
        yield Gateway(f"http://127.0.0.1:{port}", port, proc)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def browser(gateway, log_dir) -> Iterator[Browser]:
    browser = Browser(gateway.url, log_dir)
    try:
        browser.sign_in("operator")
        yield browser
    finally:
        browser.quit()


@pytest.fixture(autouse=True)
def _network_log(browser: Browser) -> Iterator[None]:
    yield
    browser.drain_logs()


@pytest.fixture(scope="module")
def clients(gateway) -> Iterator[dict[str, httpx.Client]]:
    names = ("operator", "client_a", "client_b")
    made = {name: keyed_client(gateway.url, name) for name in names}
    yield made
    for client in made.values():
        client.close()


def row_status(browser: Browser, job_id: str) -> str | None:
    return browser.attribute(f'tr[data-job-id="{job_id}"]', "data-status")


def page_status(browser: Browser) -> str:
    return browser.text("#job-status")


def test_a_new_job_appears_and_completes_without_a_reload(browser, clients, sim: Simulators):
    sim.behave("fast_chat_llm", latency_ms=800)
    browser.go("/dashboard")
    browser.until(lambda: browser.text("#live") == "live", "the jobs page to follow /ws")
    job_id = submit(clients["client_a"], "business_plan")
    first = browser.until(lambda: row_status(browser, job_id), "the new job's row")
    assert first in {"PENDING", "RUNNING"}, first
    browser.until(lambda: row_status(browser, job_id) == "COMPLETED", "the row to complete")
    assert browser.text(f'tr[data-job-id="{job_id}"] .pct') == "100%"
    assert browser.not_reloaded()


def test_a_job_finishing_while_the_api_restarts_completes_once_the_page_is_back(
    browser, gateway, clients, sim: Simulators, db
):
    """The page resumes /ws after the last id it saw: the events it missed arrive."""
    sim.behave("fast_chat_llm", latency_ms=1500)
    browser.go("/dashboard")
    browser.until(lambda: browser.text("#live") == "live", "the jobs page to follow /ws")
    job_id = submit(clients["client_a"], "business_plan")
    browser.until(lambda: row_status(browser, job_id) == "RUNNING", "the job to run")
    gateway.proc.stop()
    try:
        browser.until(lambda: browser.text("#live") == "reconnecting…", "the socket to drop")
        wait_until(lambda: "JOB_COMPLETED" in event_types(job_id), 20, message="the job's end")
        assert row_status(browser, job_id) == "RUNNING"
    finally:
        gateway.proc.restart()
        gateway.proc.wait_for_port(gateway.port, 30)
    browser.until(lambda: row_status(browser, job_id) == "COMPLETED", "the missed events")
    assert browser.text("#live") == "live"
    assert browser.not_reloaded()


def test_the_job_page_shows_every_step_with_attempts_and_duration(
    browser, clients, sim: Simulators
):
    sim.behave("flaky", script=[{"status": 503}])  # the third step retries once
    sim.behave("fast_chat_llm", latency_ms=300)
    job_id = submit(clients["client_a"], "four_steps")
    job = wait_for_job(clients["operator"], job_id)
    assert job["status"] == "COMPLETED", job
    browser.go(f"/dashboard/jobs/{job_id}")
    browser.until(lambda: page_status(browser) == "COMPLETED", "the job page")
    flaky = browser.until(
        lambda: (
            "attempt 2 running" in (text := browser.text('tr.step[data-step="2"] + tr.detail'))
            and text
        ),
        "the retried step's phases",
    )
    assert "retrying" in flaky, flaky
    assert "attempt 1 running" in flaky, flaky
    for step in job["steps"]:
        row = f'tr.step[data-step="{step["step_index"]}"]'
        assert browser.text(f"{row} td:nth-child(2)").startswith(step["step_name"])
        assert browser.text(f"{row} .badge") == "COMPLETED"
        assert browser.text(f"{row} .attempts") == f"{step['attempt']} of {step['max_attempts']}"
        assert DURATION.match(browser.text(f"{row} .duration")), browser.text(f"{row} .duration")
        assert browser.all(f"{row} .track .seg.running"), "a running segment per step"
    assert job["steps"][2]["attempt"] == 2
    browser.until(lambda: browser.text("#live") == "up to date", "the job's whole stream")
    browser.screenshot("job")


def test_an_operator_resumes_failed_jobs_from_the_page(browser, clients, sim: Simulators):
    operator = clients["operator"]
    sim.behave("flaky", failure_rate=1.0, failure_status=400)  # not retryable: fails at once
    from_step = submit(clients["client_a"], "four_steps")  # fails at step 2
    plain = submit(clients["client_a"], "flaky_then_mail")  # fails at step 0
    for job_id in (from_step, plain):
        assert wait_for_job(operator, job_id)["status"] == "FAILED"

    browser.go(f"/dashboard/jobs/{from_step}")
    browser.until(lambda: page_status(browser) == "FAILED", "the failed job")
    assert "Failed at step 2 (flaky)" in browser.text("#job-error")
    browser.until(lambda: browser.text("#live") == "up to date", "the job's whole stream")
    browser.screenshot("job-failed")
    sim.behave("flaky")  # the service is well again
    browser.until(lambda: browser.visible("#resume-step"), "the resume controls")
    browser.driver.execute_script(
        "const s = document.querySelector('#resume-step'); s.value = '1';"
        "s.dispatchEvent(new Event('change'))"
    )
    browser.click("#resume-from")
    browser.until(lambda: browser.text("#action-result") == "Resumed from step 1.", "resume")
    assert wait_for_job(operator, from_step)["status"] == "COMPLETED"
    browser.until(lambda: page_status(browser) == "COMPLETED", "the page to follow the resume")
    assert len(sim.requests("fast_chat_llm", from_step)) == 2, "step 1 ran again"
    assert len(sim.requests("prompt_enhancer", from_step)) == 1, "step 0 kept its output"

    browser.go(f"/dashboard/jobs/{plain}")
    browser.until(lambda: page_status(browser) == "FAILED", "the second failed job")
    browser.click("#resume")
    browser.until(lambda: browser.text("#action-result") == "Resumed from step 0.", "resume")
    assert wait_for_job(operator, plain)["status"] == "COMPLETED"
    browser.until(lambda: page_status(browser) == "COMPLETED", "the page to follow the resume")
    assert len(sim.requests("flaky", plain)) == 2
    assert browser.not_reloaded()


def test_an_operator_cancels_a_running_job_from_the_page(browser, clients, sim: Simulators):
    operator = clients["operator"]
    sim.behave("fast_chat_llm", latency_ms=20_000)
    job_id = submit(clients["client_a"], "business_plan")
    wait_for_step(operator, job_id, 1, "RUNNING")
    browser.go(f"/dashboard/jobs/{job_id}")
    browser.until(lambda: page_status(browser) == "RUNNING", "the running job")
    browser.click("#cancel")
    assert browser.text("#cancel") == "Click again to cancel"
    assert operator.get(f"/api/v1/jobs/{job_id}").json()["status"] == "RUNNING"
    browser.click("#cancel")
    wait_until(lambda: operator.get(f"/api/v1/jobs/{job_id}").json()["status"] == "CANCELLED", 10)
    browser.until(lambda: page_status(browser) == "CANCELLED", "the page to show the cancel")
    assert not browser.visible("#cancel")


def test_the_services_page_shows_leases_in_use_rising_under_load(browser, clients, sim: Simulators):
    browser.go("/dashboard/services")
    leases = '[data-service="limited"] .leases'
    before = int(browser.until(lambda: browser.text(leases), "the services table"))
    sim.behave("limited", latency_ms=2500)
    jobs = [submit(clients["client_a"], "limited_job") for _ in range(4)]
    readings: list[int] = []

    def busy() -> bool:
        readings.append(int(browser.text(leases) or 0))
        return readings[-1] >= 2

    browser.until(busy, "two leases in use on the page", timeout=15)
    assert before == 0, before
    assert browser.not_reloaded()
    browser.screenshot("services")
    for job_id in jobs:
        assert wait_for_job(clients["operator"], job_id)["status"] == "COMPLETED"
    browser.until(lambda: browser.text(leases) == "0", "the leases to go back")
    assert max(readings) <= 3, readings  # the service's limit


def test_the_jobs_page_at_a_glance(browser, clients, sim: Simulators):
    """The list after the tests above (completed, resumed, cancelled jobs), with one
    more failed and one running: a failed job stands out."""
    sim.behave("flaky", failure_rate=1.0, failure_status=400)
    sim.behave("fast_chat_llm", latency_ms=20_000)
    failed = submit(clients["client_a"], "flaky_then_mail")
    running = submit(clients["client_a"], "business_plan")
    browser.go("/dashboard")
    browser.until(lambda: row_status(browser, failed) == "FAILED", "the failed job")
    browser.until(lambda: row_status(browser, running) == "RUNNING", "the running job")
    background = "return getComputedStyle(document.querySelector({!r})).backgroundColor"
    failed_look = browser.driver.execute_script(background.format(f'tr[data-job-id="{failed}"] td'))
    running_look = browser.driver.execute_script(
        background.format(f'tr[data-job-id="{running}"] td')
    )
    assert failed_look != running_look, failed_look
    assert "http_400" in browser.text(f'tr[data-job-id="{failed}"] .col-error')
    browser.screenshot("jobs")
    assert clients["operator"].post(f"/api/v1/jobs/{running}/cancel").status_code == 200
    browser.driver.execute_script(
        "const s = document.querySelector('#filter-status'); s.value = 'CANCELLED';"
        "s.dispatchEvent(new Event('change'))"
    )
    browser.until(
        lambda: set(browser.attributes("#jobs-body tr", "data-status")) == {"CANCELLED"},
        "only cancelled jobs",
    )
    assert "status=CANCELLED" in browser.driver.current_url


def test_a_client_key_sees_only_its_tenant_and_no_operator_action(browser, clients):
    theirs = submit(clients["client_a"], "python_job", {"text": "tenant a"})
    mine = submit(clients["client_b"], "python_job", {"text": "tenant b"})
    wait_for_job(clients["operator"], theirs)
    browser.sign_in("client_b")
    browser.until(lambda: row_status(browser, mine) == "COMPLETED", "client b's job")
    later_theirs = submit(clients["client_a"], "python_job", {"text": "a again"})
    later_mine = submit(clients["client_b"], "python_job", {"text": "b again"})
    browser.until(lambda: row_status(browser, later_mine), "client b's new job, live")
    shown = set(browser.attributes("#jobs-body tr", "data-job-id"))
    assert theirs not in shown
    assert later_theirs not in shown
    tenants = {clients["operator"].get(f"/api/v1/jobs/{j}").json()["tenant"] for j in shown}
    assert tenants == {"tenant-b"}
    assert not browser.visible("th.col-tenant")
    assert browser.text("#identity") == "client · tenant-b"
    assert browser.driver.execute_script("return localStorage.length") == 0, "session only"

    browser.go(f"/dashboard/jobs/{mine}")
    browser.until(lambda: page_status(browser) == "COMPLETED", "client b's job page")
    assert not browser.visible("#job-actions")
    assert not browser.visible("#resume-from")
    browser.go(f"/dashboard/jobs/{theirs}")
    browser.until(lambda: "does not exist" in browser.text("#notice"), "another tenant's job")
    browser.go("/dashboard/services")
    browser.until(lambda: "operator key" in browser.text("#notice"), "services for operators")
    browser.sign_in("operator")


def test_no_request_leaves_the_gateway_host(browser, gateway):
    browser.drain_logs()
    host = urlsplit(gateway.url).netloc
    assert {"http", "ws"} <= {urlsplit(url).scheme for url in browser.urls}, browser.urls
    strangers = [url for url in browser.urls if urlsplit(url).netloc != host]
    assert strangers == [], strangers
    assert browser.origins() == {f"http://{host}", f"ws://{host}"}
    # Refused requests (401, 403, 404) and the dropped socket are logged as network
    # errors; a script error is not expected anywhere.
    errors = [e for e in browser.console if e["level"] == "SEVERE" and e["source"] != "network"]
    assert errors == [], errors
