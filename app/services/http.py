"""HTTP services: the request DESIGN.md specifies and the retryable/permanent taxonomy.

With tracing on, the client is instrumented (app/tracing.py): every call carries the
W3C `traceparent` of its step attempt's trace."""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import TYPE_CHECKING, Any

import certifi
import httpx
import structlog

from app.catalog import Service
from app.config import get_settings
from app.json_values import STRICT_LOADS, check_utf8
from app.services.errors import StepError, output_too_large
from app.services.interrupt import CallInterrupted, Interruptible, Stopped, interruptible
from app.tracing import instrument_http_client

if TYPE_CHECKING:
    from app.services import StepCall

log = structlog.get_logger(__name__)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_client: httpx.Client | None = None
_ssl_context: ssl.SSLContext | None = None


def prepare_tls() -> None:
    """Load the CA bundle once in a pre-fork parent: every child then shares it
    instead of spending tens of milliseconds of CPU loading its own."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context(cafile=certifi.where())


def get_client() -> httpx.Client:
    # One pooled client per process, created lazily after fork (sockets must not be shared).
    global _client
    if _client is None:
        _client = httpx.Client(
            limits=httpx.Limits(max_connections=100),
            follow_redirects=False,
            verify=_ssl_context if _ssl_context is not None else True,
        )
        # With tracing on, each call gets a client span and sends its `traceparent`.
        instrument_http_client(_client)
    return _client


def close_client() -> None:
    global _client
    if _client is not None:
        _client.close()
    _client = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def headers_for(service: Service, call: StepCall) -> dict[str, str]:
    """The contract's headers, then the service's own `headers:` (its credentials), or
    else X-Internal-Api-Key when INTERNAL_API_KEY is set: a service with credentials
    of its own is never sent the secret shared by the others."""
    headers = {"X-Job-Id": call.job_id, "Idempotency-Key": call.idempotency_key}
    key = get_settings().internal_api_key
    if service.headers:
        headers.update(service.headers)
    elif key:
        headers["X-Internal-Api-Key"] = key
    return headers


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip()
    return text[:500] if text else response.reason_phrase


def classify_response(response: httpx.Response) -> dict[str, Any]:
    """The step output for a 2xx JSON object; StepError for everything else."""
    status = response.status_code
    if status in RETRYABLE_STATUS:
        raise StepError(
            f"HTTP {status}: {_snippet(response)}",
            code=f"http_{status}",
            retryable=True,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
        )
    if not 200 <= status < 300:
        raise StepError(
            f"HTTP {status}: {_snippet(response)}", code=f"http_{status}", retryable=False
        )
    try:
        body = response.json(**STRICT_LOADS)
        check_utf8(response.content, body)
    except ValueError as exc:
        raise StepError(
            f"service answered {status} with a body that is not valid JSON ({exc}): "
            f"{_snippet(response)[:200]}",
            code="invalid_response",
            retryable=False,
        ) from exc
    return body if isinstance(body, dict) else {"result": body}


def _read_within(
    streamed: httpx.Response, service: Service, limit: int, deadline: float
) -> httpx.Response:
    """The answer, its body read up to `limit` bytes: a runaway answer never fills the
    worker's memory. A 2xx body past the limit is a StepError (it would be the step's
    output); any other is cut there, as only its status and a snippet are used. An
    answer still arriving at `deadline` (monotonic) is a timeout: a service trickling
    bytes would otherwise hold the call, its slot and its job for ever, since each
    read is only bounded on its own."""
    success = 200 <= streamed.status_code < 300
    declared = streamed.headers.get("Content-Length", "")
    if success and declared.isdigit() and int(declared) > limit:
        raise output_too_large(service, f"a {declared}-byte answer", limit)
    body = bytearray()
    for chunk in streamed.iter_bytes():  # decoded: the limit is on what would be stored
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer was still arriving", request=streamed.request)
        body += chunk
        if len(body) > limit:
            if success:
                raise output_too_large(service, f"an answer of more than {limit} bytes", limit)
            del body[limit:]
            break
    # The body as read (decoded), without the headers that described its transfer.
    headers = [
        (name, value)
        for name, value in streamed.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        streamed.status_code, headers=headers, content=bytes(body), request=streamed.request
    )


def call_http(
    service: Service, call: StepCall, handle: Interruptible | None = None
) -> dict[str, Any]:
    """POST the call; interrupting `handle` stops it and closes its connection, so the
    service sees its caller go (app/services/interrupt.py: in a prefork pool's
    processes)."""
    settings = get_settings()
    handle = handle or Interruptible()
    # The service's timeout_s bounds each read and the answer as a whole (checked as
    # it arrives, so a trickled answer ends within about twice timeout_s); connect has
    # its own short budget.
    deadline = time.monotonic() + service.timeout_s
    timeout = httpx.Timeout(
        service.timeout_s,
        connect=min(settings.http_connect_timeout_s, service.timeout_s),
        read=service.timeout_s,
    )
    assert service.url is not None
    headers = headers_for(service, call)
    try:
        # A request unwound by Stopped closes its connection (httpcore does not pool it).
        with (
            interruptible(handle),
            get_client().stream(
                "POST", service.url, json=call.payload(), headers=headers, timeout=timeout
            ) as streamed,
        ):
            response = _read_within(streamed, service, settings.max_step_output_bytes, deadline)
    except Stopped:
        raise CallInterrupted(f"the call to {service.name} was interrupted") from None
    except httpx.TimeoutException as exc:
        raise StepError(
            f"{service.name} timed out ({type(exc).__name__}) after {service.timeout_s:g}s",
            code="timeout",
            retryable=True,
        ) from exc
    except httpx.TransportError as exc:
        # The address stays in the worker's log: an error is shown to clients.
        log.warning("cannot reach service", service=service.name, url=service.url, error=str(exc))
        raise StepError(
            f"cannot reach {service.name} ({type(exc).__name__}: {exc})",
            code="connect_error",
            retryable=True,
        ) from exc
    return classify_response(response)
