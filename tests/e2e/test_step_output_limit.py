"""MAX_STEP_OUTPUT_BYTES: a step output is stored, sent to every later step and put in
an event, so a larger one fails the step (permanently: the same call answers the
same) before the worker reads it whole. Error answers are only cut, not failed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.catalog import Service
from app.config import get_settings
from app.services import StepError, call_service
from tests.harness import step_call

LIMIT = 1000


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("MAX_STEP_OUTPUT_BYTES", str(LIMIT))
    get_settings.cache_clear()
    yield LIMIT
    monkeypatch.undo()
    get_settings.cache_clear()


def _http(url: str) -> Service:
    return Service(name="answers", kind="http", url=url, timeout_s=5)


def test_an_answer_declared_over_the_limit_fails_permanently(sim, limit):
    sim.behave("flaky", script=[{"status": 200, "body": {"blob": "x" * limit}}])
    with pytest.raises(StepError) as failed:
        call_service(_http(f"{sim.base_url}/flaky"), step_call())
    assert failed.value.code == "output_too_large"
    assert failed.value.retryable is False
    assert f"MAX_STEP_OUTPUT_BYTES={limit}" in failed.value.message


def test_an_answer_at_the_limit_is_the_output(sim, limit):
    blob = "x" * (limit - len('{"blob":""}'))
    sim.behave("flaky", script=[{"status": 200, "body": {"blob": blob}}])
    assert call_service(_http(f"{sim.base_url}/flaky"), step_call()) == {"blob": blob}


def test_an_error_answer_over_the_limit_keeps_its_status(sim, limit):
    sim.behave("flaky", script=[{"status": 503, "body": "busy " * limit}])
    with pytest.raises(StepError) as failed:
        call_service(_http(f"{sim.base_url}/flaky"), step_call())
    assert failed.value.code == "http_503"
    assert failed.value.retryable is True


class _Endless(BaseHTTPRequestHandler):
    """An outside service whose answer has no length and does not stop (HTTP/1.0: the
    body ends when the connection closes)."""

    sent = 0

    def do_POST(self) -> None:  # noqa: N802 (the handler's required name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"blob": "')
        try:
            for _ in range(10_000):  # 10 MB, unless the reader stops first
                self.wfile.write(b"x" * 1000)
                type(self).sent += 1000
        except OSError:
            pass  # the gateway hung up

    def log_message(self, *args: Any) -> None:
        pass


def test_an_answer_without_length_is_cut_off_at_the_limit(limit):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StepError) as failed:
            call_service(_http(f"http://127.0.0.1:{server.server_port}/"), step_call())
    finally:
        server.shutdown()
        server.server_close()
    assert failed.value.code == "output_too_large"
    assert f"more than {limit} bytes" in failed.value.message
    assert _Endless.sent < 5_000_000, "the worker read on past the limit"


def big(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    return {"blob": "é" * input_data["chars"]}  # 6 bytes each in JSON text: \u00e9


def test_a_python_step_output_over_the_limit_fails_permanently(limit):
    service = Service(name="big", kind="python", target=f"{__name__}:big")
    fits = (limit - len('{"blob": ""}')) // 6
    assert call_service(service, step_call(chars=fits)) == {"blob": "é" * fits}
    with pytest.raises(StepError) as failed:
        call_service(service, step_call(chars=limit))
    assert failed.value.code == "output_too_large"
    assert failed.value.retryable is False
