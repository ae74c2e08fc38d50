"""HTTP services: the request DESIGN.md specifies and the retryable/permanent taxonomy."""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import TYPE_CHECKING, Any

import certifi
import httpx

from app.catalog import Service
from app.config import get_settings
from app.services.errors import StepError

if TYPE_CHECKING:
    from app.services import StepCall

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


def headers_for(call: StepCall) -> dict[str, str]:
    headers = {"X-Job-Id": call.job_id, "Idempotency-Key": call.idempotency_key}
    key = get_settings().internal_api_key
    if key:
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
        body = response.json()
    except ValueError as exc:
        raise StepError(
            f"service answered {status} with a non-JSON body: {_snippet(response)[:200]}",
            code="invalid_response",
            retryable=False,
        ) from exc
    return body if isinstance(body, dict) else {"result": body}


def call_http(service: Service, call: StepCall) -> dict[str, Any]:
    settings = get_settings()
    # The service's timeout_s bounds the whole read; connect has its own short budget.
    timeout = httpx.Timeout(
        service.timeout_s,
        connect=min(settings.http_connect_timeout_s, service.timeout_s),
        read=service.timeout_s,
    )
    assert service.url is not None
    try:
        response = get_client().post(
            service.url, json=call.payload(), headers=headers_for(call), timeout=timeout
        )
    except httpx.TimeoutException as exc:
        raise StepError(
            f"{service.name} timed out ({type(exc).__name__}) after {service.timeout_s:g}s",
            code="timeout",
            retryable=True,
        ) from exc
    except httpx.TransportError as exc:
        raise StepError(
            f"cannot reach {service.name} at {service.url}: {exc}",
            code="connect_error",
            retryable=True,
        ) from exc
    return classify_response(response)
