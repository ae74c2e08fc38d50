"""Acceptance: bad input gets a clear 4xx in the one envelope and leaves no job behind."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.main import create_app
from app.models import Job
from tests.harness import UNKNOWN_JOB_ID


@pytest.fixture(scope="module")
def client(migrated):
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def _job_count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


JSON = {"Content-Type": "application/json"}
BAD_CREATES = [
    ("malformed json", b'{"feature_name": "business_plan",', 400, "invalid_json"),
    ("not an object", b'["business_plan"]', 422, "validation_error"),
    ("missing feature_name", b'{"input_data": {}}', 422, "validation_error"),
    ("numeric feature_name", b'{"feature_name": 7}', 422, "validation_error"),
    ("null feature_name", b'{"feature_name": null}', 422, "validation_error"),
    ("empty feature_name", b'{"feature_name": ""}', 422, "validation_error"),
    ("unknown feature", b'{"feature_name": "world_peace"}', 422, "unknown_feature"),
    (
        "list input_data",
        b'{"feature_name": "business_plan", "input_data": [1]}',
        422,
        "validation_error",
    ),
    (
        "string input_data",
        b'{"feature_name": "business_plan", "input_data": "x"}',
        422,
        "validation_error",
    ),
    ("unknown field", b'{"feature_name": "business_plan", "priority": 1}', 422, "validation_error"),
    # Python's JSON reader takes these; the job's JSON columns cannot hold them.
    *(
        (
            f"{number.decode()} in input_data",
            b'{"feature_name": "business_plan", "input_data": {"a": [1, {"b": ' + number + b"}]}}",
            422,
            "validation_error",
        )
        for number in (b"NaN", b"Infinity", b"-Infinity", b"1e999")
    ),
    # Lone surrogates: read as Python strings, but no UTF-8 text to store or send.
    *(
        (
            f"lone surrogate {where}",
            b'{"feature_name": "business_plan", "input_data": ' + body + b"}",
            422,
            "validation_error",
        )
        for where, body in (
            ("in a value", b'{"note": "\\ud800"}'),
            ("in a key", b'{"\\udfff": 1}'),
            ("deep in a list", b'{"a": [1, {"b": ["ok", "x\\udc00y"]}]}'),
        )
    ),
    (
        "oversized body",
        json.dumps(
            {"feature_name": "business_plan", "input_data": {"blob": "x" * (1024 * 1024)}}
        ).encode(),
        413,
        "payload_too_large",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [case[1:] for case in BAD_CREATES],
    ids=[case[0] for case in BAD_CREATES],
)
def test_bad_create_is_rejected_without_a_job_row(client, body, status, code):
    before = _job_count()
    response = client.post("/api/v1/jobs", content=body, headers=JSON)
    assert response.status_code == status, response.text
    envelope = response.json()
    assert envelope["success"] is False
    assert envelope["error"]["code"] == code
    assert envelope["error"]["message"]
    assert _job_count() == before


def test_oversized_body_streamed_without_length_is_rejected(client):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    before = _job_count()
    response = client.post("/api/v1/jobs", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert _job_count() == before


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/v1/jobs/not-a-uuid", 422, "validation_error"),
        (f"/api/v1/jobs/{UNKNOWN_JOB_ID}", 404, "job_not_found"),
        ("/api/v1/no-such-thing", 404, "not_found"),
        ("/api/v1/jobs?status=DONE", 422, "validation_error"),
        ("/api/v1/jobs?limit=0", 422, "validation_error"),
        ("/api/v1/jobs?cursor=%%%", 400, "invalid_cursor"),
        # PostgreSQL text cannot hold NUL: refused as input, not failed in the query.
        ("/api/v1/jobs?feature_name=a%00b", 422, "validation_error"),
    ],
)
def test_bad_reads_use_the_envelope(client, path, status, code):
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.json()["success"] is False
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/jobs/resume", {"failed_step": 2**31}),  # past an Integer column
        ("/api/v1/jobs/resume", {"feature_name": "a\x00b"}),
        ("/api/v1/jobs/resume", {"error": "\x00"}),
        (f"/api/v1/jobs/{UNKNOWN_JOB_ID}/resume", {"from_step": 2**31}),
    ],
)
def test_bad_operator_bodies_are_refused_as_input(client, path, body):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_wrong_method_uses_the_envelope(client):
    response = client.delete("/api/v1/jobs")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_create_answers_contract_and_lists_newest_first_with_cursor(client):
    ids = []
    for n in range(3):
        response = client.post(
            "/api/v1/jobs",
            json={"feature_name": "python_job", "input_data": {"text": f"job {n}"}},
            headers={"host": "gateway.example:8000"},
        )
        assert response.status_code == 201
        body = response.json()
        assert body["success"] is True
        assert body["status"] == "PENDING"
        assert body["monitor_url"] == f"ws://gateway.example:8000/ws/{body['job_id']}"
        ids.append(body["job_id"])
    first = client.get("/api/v1/jobs", params={"feature_name": "python_job", "limit": 2}).json()
    assert [j["job_id"] for j in first["items"]][:2] == ids[::-1][:2]
    second = client.get(
        "/api/v1/jobs",
        params={"feature_name": "python_job", "limit": 2, "cursor": first["next_cursor"]},
    ).json()
    seen = [j["job_id"] for j in first["items"] + second["items"]]
    assert len(seen) == len(set(seen))
    assert ids[0] in seen


def test_features_and_health(client):
    features = {f["name"]: f for f in client.get("/api/v1/features").json()["features"]}
    assert [s["service"] for s in features["business_plan"]["steps"]] == [
        "prompt_enhancer",
        "fast_chat_llm",
        "summarizer_pro",
        "email_notifier",
    ]
    assert client.get("/api/v1/health").json() == {"ok": True}
    assert "cao_queue_depth" in client.get("/metrics").text
    assert client.get("/docs").status_code == 200
