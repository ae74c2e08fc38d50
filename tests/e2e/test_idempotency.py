"""Create idempotency: one Idempotency-Key and one body make one job however many
requests race; another body is a 409; keys are per tenant and expire after retention."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.config import get_settings
from app.db import session_scope
from app.models import Job, utcnow
from tests.e2e.operator_support import (
    assert_error,
    concurrently,
    keyed_client,
    secured_api,
)

BODY = {"feature_name": "python_job", "input_data": {"text": "count these words"}}


def _create(client, key, body=BODY):
    return client.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": key})


def _jobs_holding(key: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(Job.idempotency_key == key)) or 0


def test_concurrent_creates_with_one_key_make_one_job(api, db):
    key = f"order-{uuid.uuid4()}"
    responses = concurrently(20, lambda _: _create(api, key))

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 19 + [201], [r.text for r in responses]
    assert len({r.json()["job_id"] for r in responses}) == 1
    assert _jobs_holding(key) == 1

    other_body = {**BODY, "input_data": {"text": "something else"}}
    reused = _create(api, key, other_body)
    assert_error(reused, 409, "idempotency_key_reused")
    assert reused.json()["error"]["details"]["job_id"] == responses[0].json()["job_id"]
    assert _jobs_holding(key) == 1


def test_an_expired_key_is_free_again(api, db):
    key = f"order-{uuid.uuid4()}"
    first = _create(api, key)
    assert first.status_code == 201
    old_id = first.json()["job_id"]
    assert _create(api, key).json()["job_id"] == old_id

    # Age the job past the retention window.
    retention = timedelta(hours=get_settings().idempotency_retention_hours)
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(old_id))
            .values(created_at=utcnow() - retention - timedelta(minutes=1))
        )

    second = _create(api, key)
    assert second.status_code == 201, second.text
    new_id = second.json()["job_id"]
    assert new_id != old_id
    repeat = _create(api, key)
    assert (repeat.status_code, repeat.json()["job_id"]) == (200, new_id)
    assert _jobs_holding(key) == 1


@pytest.mark.slow
def test_keys_are_scoped_to_the_tenant(env, log_dir, migrated):
    key = f"order-{uuid.uuid4()}"
    with (
        secured_api(env, log_dir) as url,
        keyed_client(url, "client_a") as tenant_a,
        keyed_client(url, "client_b") as tenant_b,
    ):
        created_a = _create(tenant_a, key)
        # The same key with another body in another tenant is no conflict: a new job.
        created_b = _create(tenant_b, key, {**BODY, "input_data": {"text": "tenant b"}})
        assert created_a.status_code == created_b.status_code == 201, created_b.text
        job_a, job_b = created_a.json()["job_id"], created_b.json()["job_id"]
        assert job_a != job_b
        assert tenant_a.get(f"/api/v1/jobs/{job_a}").json()["tenant"] == "tenant-a"
        repeat_a = _create(tenant_a, key)
        assert (repeat_a.status_code, repeat_a.json()["job_id"]) == (200, job_a)
