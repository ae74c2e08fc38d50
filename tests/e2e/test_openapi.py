"""The OpenAPI document tells clients the truth about errors: every error answer of
every operation is documented, in the one envelope, and the answers a real `cao api`
gives to bad requests are the ones its document lists for that operation. Methods:
a 405 names every method of its path, and HEAD is answered wherever GET is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.api.responses import ErrorEnvelope
from tests.e2e.operator_support import keyed_client, secured_api, submit
from tests.harness import UNKNOWN_JOB_ID

ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"


@pytest.fixture(scope="module")
def api_url(env, log_dir, migrated) -> Iterator[str]:
    with secured_api(env, log_dir) as url:
        yield url


@pytest.fixture(scope="module")
def document(api_url) -> dict[str, Any]:
    return httpx.get(f"{api_url}/openapi.json").json()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


def test_every_error_of_every_operation_is_documented_as_the_envelope(document):
    operations = list(_operations(document))
    assert len(operations) >= 10
    for path, method, operation in operations:
        responses = operation["responses"]
        where = f"{method.upper()} {path}"
        assert "500" in responses, where
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in responses, where
        if "{job_id}" in path:
            assert "404" in responses, where
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ENVELOPE_REF}, (where, status, schema)
    # FastAPI's own validation error shape ({"detail": [...]}) is never answered.
    assert "HTTPValidationError" not in document["components"]["schemas"]


def _create(client: httpx.Client, key: str, feature: str = "business_plan") -> httpx.Response:
    return client.post(
        "/api/v1/jobs",
        json={"feature_name": feature, "input_data": {"prompt": "openapi"}},
        headers={"Idempotency-Key": key},
    )


# (what, key name, method, documented path, request path, request arguments, status, code)
BAD_REQUESTS: list[tuple[str, str | None, str, str, str, dict[str, Any], int, str]] = [
    ("no key", None, "get", "/api/v1/jobs", "/api/v1/jobs", {}, 401, "missing_api_key"),
    (
        "malformed JSON",
        "client_a",
        "post",
        "/api/v1/jobs",
        "/api/v1/jobs",
        {"content": b'{"feature_name": ', "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_json",
    ),
    (
        "unknown feature",
        "client_a",
        "post",
        "/api/v1/jobs",
        "/api/v1/jobs",
        {"json": {"feature_name": "world_peace"}},
        422,
        "unknown_feature",
    ),
    (
        "oversized body",
        "client_a",
        "post",
        "/api/v1/jobs",
        "/api/v1/jobs",
        {"json": {"feature_name": "business_plan", "input_data": {"x": "a" * 1_100_000}}},
        413,
        "payload_too_large",
    ),
    (
        "foreign cursor",
        "client_a",
        "get",
        "/api/v1/jobs",
        "/api/v1/jobs",
        {"params": {"cursor": "not-a-cursor"}},
        400,
        "invalid_cursor",
    ),
    (
        "unknown job",
        "client_a",
        "get",
        "/api/v1/jobs/{job_id}",
        f"/api/v1/jobs/{UNKNOWN_JOB_ID}",
        {},
        404,
        "job_not_found",
    ),
    (
        "bad UUID",
        "client_a",
        "get",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/not-a-uuid",
        {},
        422,
        "validation_error",
    ),
    (
        "events of an unknown job",
        "client_a",
        "get",
        "/api/v1/jobs/{job_id}/events",
        f"/api/v1/jobs/{UNKNOWN_JOB_ID}/events",
        {},
        404,
        "job_not_found",
    ),
    (
        "client resumes",
        "client_a",
        "post",
        "/api/v1/jobs/{job_id}/resume",
        f"/api/v1/jobs/{UNKNOWN_JOB_ID}/resume",
        {},
        403,
        "operator_required",
    ),
    (
        "operator resumes an unknown job",
        "operator",
        "post",
        "/api/v1/jobs/{job_id}/resume",
        f"/api/v1/jobs/{UNKNOWN_JOB_ID}/resume",
        {},
        404,
        "job_not_found",
    ),
    (
        "bulk resume limit 0",
        "operator",
        "post",
        "/api/v1/jobs/resume",
        "/api/v1/jobs/resume",
        {"json": {"limit": 0}},
        422,
        "validation_error",
    ),
    (
        "client reads services",
        "client_a",
        "get",
        "/api/v1/services",
        "/api/v1/services",
        {},
        403,
        "operator_required",
    ),
    (
        "no key for features",
        None,
        "get",
        "/api/v1/features",
        "/api/v1/features",
        {},
        401,
        "missing_api_key",
    ),
]


def _check_documented(
    document: dict[str, Any], method: str, path: str, response: httpx.Response, code: str
) -> None:
    documented = document["paths"][path][method]["responses"]
    assert str(response.status_code) in documented, (method, path, response.status_code)
    envelope = ErrorEnvelope.model_validate(response.json())
    assert envelope.error.code == code, response.text


@pytest.mark.parametrize(
    ("key", "method", "path", "url", "arguments", "status", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_documented_error(
    api_url, document, key, method, path, url, arguments, status, code
):
    with keyed_client(api_url, key) as client:
        response = client.request(method.upper(), url, **arguments)
    assert response.status_code == status, response.text
    _check_documented(document, method, path, response, code)


def test_conflicts_are_documented(api_url, document):
    key = f"openapi-{uuid.uuid4()}"
    with keyed_client(api_url, "client_a") as client, keyed_client(api_url, "operator") as op:
        created = _create(client, key)
        assert created.status_code == 201, created.text
        reused = _create(client, key, feature="viral_video")
        assert reused.status_code == 409
        _check_documented(document, "post", "/api/v1/jobs", reused, "idempotency_key_reused")
        job = f"/api/v1/jobs/{created.json()['job_id']}"
        assert op.post(f"{job}/cancel").status_code == 200
        again = op.post(f"{job}/cancel")
        assert again.status_code == 409
        _check_documented(
            document, "post", "/api/v1/jobs/{job_id}/cancel", again, "job_not_cancellable"
        )
        not_failed = op.post(f"{job}/resume")
        assert not_failed.status_code == 409
        _check_documented(
            document, "post", "/api/v1/jobs/{job_id}/resume", not_failed, "job_not_resumable"
        )


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        # /jobs/resume also matches /jobs/{job_id}; only its own POST is allowed there.
        ("OPTIONS", "/api/v1/jobs/resume", "POST"),
        ("DELETE", f"/api/v1/jobs/{UNKNOWN_JOB_ID}", "GET, HEAD"),
        ("PUT", "/api/v1/jobs", "GET, HEAD, POST"),
        # Outside the document: the router's own answer.
        ("POST", "/metrics", "GET, HEAD"),
    ],
)
def test_method_not_allowed_names_the_methods_of_the_path(api_url, method, url, allowed):
    with keyed_client(api_url, "operator") as client:
        response = client.request(method, url)
    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert ErrorEnvelope.model_validate(response.json()).error.code == "method_not_allowed"


def test_head_answers_as_get_does_without_a_body(api_url):
    """HEAD is served wherever GET is (HTTP requires it; uptime checkers send it): the
    GET's status and headers, no body, errors included."""
    with keyed_client(api_url, "client_a") as client:
        job = f"/api/v1/jobs/{submit(client, 'business_plan')}"
        for url in (
            "/api/v1/health",
            "/api/v1/jobs",
            job,
            f"/api/v1/jobs/{UNKNOWN_JOB_ID}",
            "/metrics",
        ):
            got, head = client.get(url), client.head(url)
            assert head.status_code == got.status_code, url
            assert head.headers["content-type"] == got.headers["content-type"], url
            assert head.content == b"", url
        assert client.head(f"/api/v1/jobs/{UNKNOWN_JOB_ID}").status_code == 404


def test_head_of_an_event_stream_ends_with_its_headers(api_url):
    """The stream of a job that is still running would go on until its client left:
    its HEAD ends once the headers are out, and the connection serves the next request."""
    with keyed_client(api_url, "client_a") as client:
        job = f"/api/v1/jobs/{submit(client, 'business_plan')}"  # no worker: it stays PENDING
        head = client.head(f"{job}/events", headers={"Accept": "text/event-stream"}, timeout=5)
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        assert client.get(job, timeout=5).status_code == 200  # the same kept-alive connection
