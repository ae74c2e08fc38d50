"""Helpers for the operator tests (resume, cancel, idempotency, auth, CLI): a `cao api`
process guarded by API keys, job submission, and reads of the durable record."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.harness import CAO, Proc, free_port, wait_until

# name -> (key, role, tenant)
KEYS: dict[str, tuple[str, str, str]] = {
    "client_a": ("client-a-key-0123456789", "client", "tenant-a"),
    "client_b": ("client-b-key-0123456789", "client", "tenant-b"),
    "operator": ("operator-key-0123456789", "operator", "ops"),
}
API_KEYS = ",".join(f"{key}:{role}:{tenant}" for key, role, tenant in KEYS.values())


def key_of(name: str) -> str:
    return KEYS[name][0]


@contextlib.contextmanager
def secured_api(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """A `cao api` sharing the run's database and Redis, with the KEYS configured."""
    port = free_port()
    proc = Proc(
        "api-secured", [*CAO, "api", "--port", str(port)], {**env, "API_KEYS": API_KEYS}, log_dir
    )
    try:
        proc.wait_for_port(port, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def keyed_client(base_url: str, name: str | None) -> httpx.Client:
    """A client presenting the named key as a bearer token (no key when name is None)."""
    headers = {"Authorization": f"Bearer {key_of(name)}"} if name else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=15)


def submit(
    client: httpx.Client,
    feature: str,
    input_data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    response = client.post(
        "/api/v1/jobs",
        json={"feature_name": feature, "input_data": input_data or {"prompt": "a bakery"}},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


def concurrently(calls: int, fn: Any) -> list[Any]:
    """Run `fn(i)` for i in range(calls) on as many threads, all at once."""
    with ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(fn, range(calls)))


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The response is an error in the one envelope, with this status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body


def event_types(job_id: str) -> list[str]:
    """The job's durable event log, in seq order (needs the `db` fixture)."""
    from app.db import session_scope
    from app.events.log import events_for_job

    with session_scope() as session:
        return [event.type for event in events_for_job(session, uuid.UUID(job_id))]


def step_fence(job_id: str, step_index: int) -> int:
    """The delivery token of a step (needs the `db` fixture)."""
    from app.db import session_scope
    from app.jobs.repository import get_step

    with session_scope() as session:
        step = get_step(session, uuid.UUID(job_id), step_index)
        assert step is not None
        return step.fence


def service_usage(api: httpx.Client, service: str) -> dict[str, Any]:
    rows = api.get("/api/v1/services").json()["services"]
    return next(row for row in rows if row["name"] == service)


def wait_for_step(
    api: httpx.Client, job_id: str, step_index: int, status: str, timeout: float = 30
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body = api.get(f"/api/v1/jobs/{job_id}").json()
        return body if body["steps"][step_index]["status"] == status else None

    return wait_until(reached, timeout, 0.05, f"step {step_index} of {job_id} to be {status}")
