"""/api/v1/jobs operator actions: resume one job, resume many by filter. (Cancel,
which a client may do too, is in app/api/jobs.py.)

The domain logic is in app/jobs/operator_actions.py; the request's session commits
what an action changed once the route returns (app/api/deps.py SessionDep).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.deps import SessionDep, require_operator
from app.api.responses import errors
from app.jobs import operator_actions
from app.jobs.schemas import JobDetail
from app.models import INTEGER_MAX, TEXT_WITHOUT_NUL

# Every action here is an operator's: a client key gets 403, no key 401.
router = APIRouter(
    prefix="/jobs",
    tags=["operations"],
    dependencies=[Depends(require_operator)],
    responses=errors(400, 401, 403, 413, 422, 503),
)

MAX_BULK_RESUME = 10_000


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_step: int | None = Field(
        None,
        ge=0,
        le=INTEGER_MAX,
        description="Restart here (≤ the failed step); steps before it are kept. Required "
        "to rerun a COMPLETED or CANCELLED job: the steps from here are new work, each "
        "with a new Idempotency-Key (`<job_id>:<step_index>:r<N>` on the Nth rerun).",
    )


class BulkResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature_name: str | None = Field(None, max_length=100, pattern=TEXT_WITHOUT_NUL)
    failed_step: int | None = Field(
        None, ge=0, le=INTEGER_MAX, description="The step index the job failed at."
    )
    error: str | None = Field(
        None, max_length=64, pattern=TEXT_WITHOUT_NUL, description="The job's error code."
    )
    created_after: datetime | None = None
    dry_run: bool = False
    limit: int = Field(1000, ge=1, le=MAX_BULK_RESUME)

    @field_validator("created_after")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A timestamp without an offset is taken as UTC, like every time the API returns.
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class BulkResumeResponse(BaseModel):
    success: bool = True
    dry_run: bool
    count: int = Field(description="Jobs resumed, or with dry_run, jobs that would be.")
    job_ids: list[uuid.UUID]
    matched: int = Field(description="FAILED jobs matching the filters, `limit` aside.")
    more: bool = Field(
        description="More jobs match than `limit` let this request take (after a real "
        "run, sending it again resumes the next ones)."
    )


@router.post("/resume", response_model=BulkResumeResponse)
def bulk_resume(body: BulkResumeRequest, session: SessionDep) -> BulkResumeResponse:
    """Resume every FAILED job matching all given filters, oldest first."""
    result = operator_actions.bulk_resume(
        session,
        feature_name=body.feature_name,
        failed_step=body.failed_step,
        error_code=body.error,
        created_after=body.created_after,
        dry_run=body.dry_run,
        limit=body.limit,
    )
    return BulkResumeResponse(
        dry_run=result.dry_run,
        count=len(result.job_ids),
        job_ids=result.job_ids,
        matched=result.matched,
        more=result.matched > body.limit,
    )


@router.post("/{job_id}/resume", response_model=JobDetail, responses=errors(404, 409))
def resume_job(
    job_id: uuid.UUID, session: SessionDep, body: ResumeRequest | None = None
) -> JobDetail:
    """Resume a FAILED job from its failed step, or from an earlier `from_step`; with
    `from_step`, rerun a COMPLETED or CANCELLED job from that step."""
    return operator_actions.resume_job(session, job_id, body.from_step if body else None)
