"""/api/v1/jobs: create, read, list and cancel jobs; the domain is app/jobs/service.py
(cancel: app/jobs/operator_actions.py)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.api.deps import CatalogDep, JobForPrincipalDep, PrincipalDep, SessionDep
from app.api.responses import errors
from app.jobs import admission, operator_actions, service
from app.jobs.schemas import JobCreate, JobCreated, JobDetail, JobPage
from app.jobs.states import JobStatus
from app.models import TEXT_WITHOUT_NUL

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=errors(401, 422, 503))


def monitor_url(request: Request, job_id: uuid.UUID) -> str:
    scheme = "wss" if request.url.scheme == "https" else "ws"
    host = request.headers.get("host") or request.url.netloc
    return f"{scheme}://{host}/ws/{job_id}"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobCreated,
    responses={
        200: {"model": JobCreated, "description": "An Idempotency-Key seen before: its job."},
        **errors(400, 409, 413),
    },
)
async def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    catalog: CatalogDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobCreated:
    # The busiest write. Without a key, the job joins this process's next group commit
    # (app/jobs/admission.py): no thread-pool hop of its own. With one, its lookup and
    # insert are one transaction in one thread-pool call. Either way the commit, and
    # with it the enqueue, happens before the answer is built.
    if idempotency_key is None:
        job = await admission.create_job(
            catalog,
            feature_name=body.feature_name,
            input_data=body.input_data,
            tenant=principal.tenant,
        )
    else:
        result = await run_in_threadpool(
            service.submit_job,
            catalog,
            feature_name=body.feature_name,
            input_data=body.input_data,
            tenant=principal.tenant,
            idempotency_key=idempotency_key,
        )
        job = result.job
        if not result.created:
            response.status_code = status.HTTP_200_OK
    return JobCreated(job_id=job.id, monitor_url=monitor_url(request, job.id), status=job.status)


@router.get("/{job_id}", response_model=JobDetail, responses=errors(404))
def get_job(job: JobForPrincipalDep, session: SessionDep) -> JobDetail:
    return service.job_detail(session, job)


@router.get("", response_model=JobPage, responses=errors(400))
def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    feature_name: Annotated[str | None, Query(max_length=100, pattern=TEXT_WITHOUT_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobPage:
    return service.list_jobs(
        session,
        status=status_,
        feature_name=feature_name,
        tenant=principal.tenant_scope,
        limit=limit,
        cursor=cursor,
    )


@router.post("/{job_id}/cancel", response_model=JobDetail, responses=errors(404, 409))
def cancel_job(job: JobForPrincipalDep, session: SessionDep) -> JobDetail:
    """Cancel a PENDING or RUNNING job (a client: one of its own tenant's) at once; a
    call in flight is interrupted, and a result that still arrives is discarded."""
    return operator_actions.cancel_job(session, job.id)
