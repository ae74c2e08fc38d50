"""Job creation and reads: the domain operations the API calls to create a job, read
one as its caller may see it, list a page of them, and count them for /metrics.
Operator actions (resume, cancel) are in app/jobs/operator_actions.py."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.catalog import Catalog
from app.config import get_settings
from app.db import session_scope, statement_scope
from app.errors import Conflict, GatewayError, JobNotFound, UnknownFeature
from app.events.log import EventDraft, latest_event_id
from app.events.types import EventType
from app.jobs import repository as repo
from app.jobs import stats_repository
from app.jobs.dispatch import Delivery
from app.jobs.ids import new_job_id
from app.jobs.job_insert import NewJob, insert_job
from app.jobs.outbox import send_after_commit
from app.jobs.schemas import JobDetail, JobPage, JobSummary
from app.jobs.states import JobStatus, StepStatus
from app.models import Job, utcnow
from app.tracing import job_trace_context


@dataclass(frozen=True)
class CreateResult:
    job: Job
    created: bool


def request_hash(feature_name: str, input_data: dict[str, Any]) -> str:
    canonical = json.dumps([feature_name, input_data], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _key_expired(job: Job) -> bool:
    retention = timedelta(hours=get_settings().idempotency_retention_hours)
    return job.created_at < utcnow() - retention


def _existing_for_key(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    job = repo.find_by_idempotency_key(session, tenant, key)
    if job is not None and _key_expired(job):
        # Past retention the key is free again: the old job lets go of it in this
        # transaction, and concurrent requests then race on the insert as for a new key.
        repo.release_idempotency_key(session, job.id)
        return None
    if job is not None and job.request_hash != digest:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            code="idempotency_key_reused",
            details={"job_id": str(job.id)},
        )
    return job


def draft_job(
    catalog: Catalog,
    *,
    feature_name: str,
    input_data: dict[str, Any],
    tenant: str = "default",
    idempotency_key: str | None = None,
) -> NewJob:
    """A PENDING job of `feature_name` with its recipe snapshot, its rows not yet
    written; raises UnknownFeature."""
    feature = catalog.features.get(feature_name)
    if feature is None:
        raise UnknownFeature(
            f"unknown feature {feature_name!r}",
            details={"known_features": sorted(catalog.features)},
        )
    services = catalog.recipe(feature_name)
    now = utcnow()
    job = Job(
        id=new_job_id(),
        tenant=tenant,
        feature_name=feature_name,
        status=JobStatus.PENDING,
        progress=0,
        current_step=0,
        total_steps=len(services),
        input_data=input_data,
        context={},
        recipe={
            "steps": [
                {"name": s.name, "service": s.model_dump(), "weight": weight}
                for s, weight in zip(services, feature.weights, strict=True)
            ]
        },
        idempotency_key=idempotency_key,
        request_hash=request_hash(feature_name, input_data),
        last_seq=1,  # JOB_CREATED, recorded with the rows
        # The `POST /jobs` span's: every step attempt's span joins this trace.
        trace_context=job_trace_context(),
        created_at=now,
        updated_at=now,
    )
    steps = [
        {
            "job_id": job.id,
            "step_index": index,
            "step_name": service.name,
            "queue": service.queue,
            "status": StepStatus.QUEUED if index == 0 else StepStatus.PENDING,
            "attempt": 1 if index == 0 else 0,
            "fence": 1 if index == 0 else 0,
            "max_attempts": service.max_attempts,
            "queued_at": now if index == 0 else None,
        }
        for index, service in enumerate(services)
    ]
    created = EventDraft(type=EventType.JOB_CREATED, data={"steps": feature.steps})
    first = services[0]
    return NewJob(job, steps, created, Delivery.of(job.id, 0, 1, first.queue, first.name))


def create_job(
    session: Session,
    catalog: Catalog,
    *,
    feature_name: str,
    input_data: dict[str, Any],
    tenant: str = "default",
    idempotency_key: str | None = None,
) -> CreateResult:
    """Commit a PENDING job with its recipe snapshot; its first step is enqueued after commit."""
    new = draft_job(
        catalog,
        feature_name=feature_name,
        input_data=input_data,
        tenant=tenant,
        idempotency_key=idempotency_key,
    )
    job, digest = new.job, new.job.request_hash or ""
    if idempotency_key is None:
        insert_job(session, new)
    else:
        existing = _existing_for_key(session, tenant, idempotency_key, digest)
        if existing is not None:
            return CreateResult(existing, created=False)
        try:
            with session.begin_nested():
                insert_job(session, new)
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key won the insert.
            existing = _existing_for_key(session, tenant, idempotency_key, digest)
            if existing is None:
                raise
            return CreateResult(existing, created=False)
    send_after_commit(session, new.first)
    return CreateResult(job, created=True)


def submit_job(catalog: Catalog, **request: Any) -> CreateResult:
    """`create_job(session, catalog, **request)` in a transaction of its own, committed
    (and the first step enqueued) on return. Without an Idempotency-Key the job is one
    statement on PostgreSQL, which commits on its own: no BEGIN and COMMIT round trips.
    A key needs its lookup and the insert in one transaction."""
    scope = statement_scope if request.get("idempotency_key") is None else session_scope
    with scope() as session:
        return create_job(session, catalog, **request)


def get_job_or_404(session: Session, job_id: uuid.UUID, tenant: str | None = None) -> Job:
    """The job, if `tenant` (None: any tenant) may see it; raises JobNotFound otherwise."""
    job = repo.get_job(session, job_id)
    # Another tenant's job is reported as missing, not forbidden: no existence leak.
    if job is None or (tenant is not None and job.tenant != tenant):
        raise JobNotFound(job_id)
    return job


def job_detail(session: Session, job: Job) -> JobDetail:
    """The job with its steps, as GET /jobs/{job_id} shows it."""
    return JobDetail.of(job, list(repo.get_steps(session, job.id)))


def list_jobs(
    session: Session,
    *,
    status: str | None,
    feature_name: str | None,
    tenant: str | None,
    limit: int,
    cursor: str | None,
) -> JobPage:
    """One page of jobs, newest first, after `cursor` (the `next_cursor` of the page
    before); `tenant` None lists every tenant's."""
    before = decode_cursor(cursor) if cursor else None
    # Read before the jobs: every change after this id is in an event a follower of
    # `/ws?after=` gets, and every change up to it is in the rows read next.
    last_event_id = latest_event_id(session)
    filters = repo.JobFilter(status=status, feature_name=feature_name, tenant=tenant)
    jobs = repo.list_jobs(session, filters, limit + 1, before)  # one more: is there a next?
    page = list(jobs[:limit])
    next_cursor = encode_cursor(page[-1]) if len(jobs) > limit and page else None
    return JobPage(
        items=[JobSummary(**JobSummary.fields_of(job)) for job in page],
        next_cursor=next_cursor,
        last_event_id=last_event_id,
    )


def read_jobs_by_status() -> dict[str, int]:
    """What /metrics reports from the job table, in a transaction of its own."""
    with session_scope() as session:
        return stats_repository.count_jobs_by_status(session)


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), str(job.id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, job_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created_at), uuid.UUID(job_id)
    except (ValueError, TypeError) as exc:
        raise GatewayError(
            "cursor is not valid; use next_cursor from a previous page", code="invalid_cursor"
        ) from exc
