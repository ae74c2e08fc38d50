"""How a service call goes out and how its answer is classified (DESIGN.md "Calling a
service"), through the worker's own HTTP client against the simulated services."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.catalog import Service, parse_catalog
from app.config import get_settings
from app.services import StepCall, StepError, call_service
from tests.harness import free_port


def _service(url: str) -> Service:
    return Service(name="answers", kind="http", url=url, timeout_s=5)


def _call(attempt: int = 1) -> StepCall:
    return StepCall(
        job_id="0b4c5a8e-5c2f-4f4e-9a59-3f1f0c1d2e3f",
        feature_name="f",
        step_index=2,
        step_name="flaky",
        attempt=attempt,
        input_data={"prompt": "p"},
        context={"earlier": {"x": 1}},
    )


@pytest.fixture
def internal_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("INTERNAL_API_KEY", "internal-secret")
    get_settings.cache_clear()
    yield "internal-secret"
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_call_carries_the_body_and_headers_the_contract_names(sim, internal_key):
    service = _service(f"{sim.base_url}/flaky")
    for attempt in (1, 2):
        assert call_service(service, _call(attempt)) is not None
    first, second = sim.requests("flaky")
    call = _call()
    for record in (first, second):
        assert record["x_job_id"] == call.job_id
        assert record["idempotency_key"] == f"{call.job_id}:2"  # the same on every attempt
        assert record["headers"]["x-internal-api-key"] == "[redacted]"  # sent, not kept
        assert (record["step_index"], record["step_name"]) == (2, "flaky")
        assert record["input_data"] == {"prompt": "p"}
        assert record["context"] == {"earlier": {"x": 1}}
    assert (first["attempt"], second["attempt"]) == (1, 2)


def test_without_an_internal_key_none_is_sent(sim):
    call_service(_service(f"{sim.base_url}/flaky"), _call())
    (record,) = sim.requests("flaky")
    assert "x-internal-api-key" not in record["headers"]


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (404, False),
        (409, False),
        (422, False),
        (501, False),
    ],
)
def test_error_statuses_are_retryable_exactly_as_the_contract_lists(sim, status, retryable):
    sim.behave("flaky", script=[{"status": status, "body": {"error": "no"}}])
    with pytest.raises(StepError) as failed:
        call_service(_service(f"{sim.base_url}/flaky"), _call())
    assert (failed.value.code, failed.value.retryable) == (f"http_{status}", retryable)


def test_a_service_nobody_listens_on_is_a_retryable_connect_error():
    url = f"http://127.0.0.1:{free_port()}/gone"
    with pytest.raises(StepError) as failed:
        call_service(_service(url), _call())
    assert (failed.value.code, failed.value.retryable) == ("connect_error", True)
    # The error is shown to clients: it names the service, never its address.
    assert "answers" in failed.value.message
    assert url not in failed.value.message
    assert "127.0.0.1" not in failed.value.message


class _Trickle(BaseHTTPRequestHandler):
    """An outside service that answers 200 and then sends its body one byte every
    0.2 s, for ever: each read finds a byte well within any read timeout."""

    def do_POST(self) -> None:  # noqa: N802 (the handler's required name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the gateway hung up

    def log_message(self, *args: Any) -> None:
        pass


def test_an_answer_trickling_past_timeout_s_is_a_timeout():
    """timeout_s bounds the whole answer, not each read alone: otherwise a service
    sending a byte now and then would hold the call, its slot and its job for ever."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    service = Service(
        name="trickle", kind="http", url=f"http://127.0.0.1:{server.server_port}/", timeout_s=1
    )
    started = time.monotonic()
    try:
        with pytest.raises(StepError) as failed:
            call_service(service, _call())
    finally:
        server.shutdown()
        server.server_close()
    assert (failed.value.code, failed.value.retryable) == ("timeout", True)
    assert time.monotonic() - started < 2 * service.timeout_s + 0.5


class _Recorder(BaseHTTPRequestHandler):
    """An outside service that answers {} and keeps each request's path and headers."""

    seen: list[tuple[str, dict[str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802 (the handler's required name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_services_own_headers_reach_that_service_only(internal_key, monkeypatch):
    monkeypatch.setenv("OWN_TOKEN", "own-secret")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    catalog = parse_catalog(
        f"""
services:
  own: {{kind: http, url: "{base}/own", headers: {{X-Service-Token: "${{OWN_TOKEN}}"}}}}
  shared: {{kind: http, url: "{base}/shared"}}
features:
  both: {{steps: [own, shared]}}
""",
        "<test>",
    )
    _Recorder.seen = []
    try:
        for name in ("own", "shared"):
            call_service(catalog.services[name], _call())
    finally:
        server.shutdown()
        server.server_close()
    seen = dict(_Recorder.seen)
    assert seen["/own"]["x-service-token"] == "own-secret"
    assert "x-internal-api-key" not in seen["/own"]  # its own credentials replace the shared one
    assert "x-service-token" not in seen["/shared"]
    assert seen["/shared"]["x-internal-api-key"] == internal_key
    # Never copied into a job's recipe snapshot (a dump) or shown.
    assert "headers" not in catalog.services["own"].model_dump()
    assert "own-secret" not in repr(catalog.services["own"])
