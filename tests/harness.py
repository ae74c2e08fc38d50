"""Test infrastructure: real servers as subprocesses and a simulator admin client.

Nothing here fakes a component of ours: workers are `cao worker` processes, the API
is `cao api` under uvicorn, the services are `cao simulators` over real HTTP. Starting,
waiting for and stopping a process is `app.supervisor`'s, as for `cao dev`; what is
the test run's own is here: a log per process in the run's log folder, and no child
left running when the run ends, however it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from app.catalog import parse_catalog
from app.embedded_stack import CAO_COMMAND
from app.supervisor import Process, free_port, port_open, wait_until

__all__ = ["free_port", "port_open", "wait_until"]

CAO = CAO_COMMAND
# A job id no test creates. Fixed, so that test ids built from it are the same in every
# process of a parallel run.
UNKNOWN_JOB_ID = "00000000-0000-4000-8000-000000000404"

_LIVE: set[Proc] = set()


def _stop_everything(*_: object) -> None:
    """Children run in their own sessions, so a killed test run must stop them itself."""
    for proc in list(_LIVE):
        if not proc.stopped:
            proc.signal_group(signal.SIGKILL)


def _on_sigterm(signum: int, frame: object) -> None:
    # pytest reports a SystemExit raised inside a test as that test's failure and runs
    # on; an interrupt ends the run.
    _stop_everything()
    raise KeyboardInterrupt


atexit.register(_stop_everything)
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _on_sigterm)


class Proc(Process):
    """A supervised process of the test run, its output in its own file in `log_dir`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        super().__init__(name, argv, env, log_dir / f"{name}-{time.monotonic_ns()}.log")
        _LIVE.add(self)


class Simulators:
    """Admin client for a running `cao simulators`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def reset(self) -> None:
        self.http.post("/_sim/reset").raise_for_status()

    def behave(self, service: str, **behavior: Any) -> None:
        self.http.put(f"/_sim/services/{service}", json=behavior).raise_for_status()

    def stats(self, service: str) -> dict[str, Any]:
        response = self.http.get(f"/_sim/services/{service}/stats")
        response.raise_for_status()
        return response.json()

    def requests(self, service: str, job_id: str | None = None) -> list[dict[str, Any]]:
        rows = self.stats(service)["requests"]
        return [r for r in rows if job_id is None or r["job_id"] == job_id]


class Workers:
    """One `cao worker` per queue, started and stopped on demand."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}

    def start(
        self,
        queue: str,
        concurrency: int = 2,
        name: str | None = None,
        pool: str = "prefork",
        env: dict[str, str] | None = None,
    ) -> Proc:
        key = name or queue
        existing = self.procs.get(key)
        if existing is not None and existing.alive():
            return existing
        argv = [*CAO, "worker", "-Q", queue, "-c", str(concurrency), "--pool", pool]
        proc = Proc(f"worker-{key}", argv, {**self.env, **(env or {})}, self.log_dir)
        proc.wait_for_log("ready.", timeout=60)
        self.procs[key] = proc
        return proc

    def stop(self, key: str) -> None:
        proc = self.procs.pop(key, None)
        if proc is not None:
            proc.stop()

    def ensure(self, *queues: str) -> None:
        for queue in queues:
            self.start(queue)

    def stop_all(self) -> None:
        for key in list(self.procs):
            self.stop(key)


def step_call(**input_data: Any) -> Any:
    """A StepCall for attempt 1 of step 0 of some job, with `input_data`: for calling a
    service in-process (app.services.call_service)."""
    from app.services import StepCall

    return StepCall(
        job_id="job",
        feature_name="f",
        step_index=0,
        step_name="s",
        attempt=1,
        input_data=input_data,
        context={},
    )


def wait_for_job(
    api: httpx.Client,
    job_id: str,
    statuses: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED"),
    timeout: float = 60.0,
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = api.get(f"/api/v1/jobs/{job_id}").json()
        return body if body.get("status") in statuses else None

    return wait_until(done, timeout, 0.05, f"job {job_id} to reach {statuses}")


def assert_failed(
    job: dict[str, Any], *, retryable: bool, code: str, says: tuple[str, ...] = ()
) -> None:
    """The job FAILED with this `retryable`, `error_code`, and an error naming `says`."""
    assert job["status"] == "FAILED", job
    assert job["retryable"] is retryable, job
    assert job["error_code"] == code, job
    for phrase in says:
        assert phrase in job["error"], job["error"]


@contextlib.contextmanager
def serving_api(name: str, env: dict[str, str], log_dir: Path) -> Iterator[httpx.Client]:
    """A `cao api` process with an environment of its own, and a client for it."""
    port = free_port()
    proc = Proc(name, [*CAO, "api", "--port", str(port)], env, log_dir)
    try:
        proc.wait_for_port(port, 30)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        proc.stop()


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


# Two steps on a queue no worker consumes: for tests that drive the step state
# machine by hand.
UNCONSUMED_PAIR = parse_catalog(
    """
services:
  one: {kind: http, url: "http://127.0.0.1:9/one", queue: unconsumed}
  two: {kind: http, url: "http://127.0.0.1:9/two", queue: unconsumed}
features:
  pair: {steps: [one, two]}
""",
    "<test>",
)
