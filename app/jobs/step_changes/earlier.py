"""What an earlier try to record an attempt's outcome left, when that try's commit
landed but its answer was lost (the connection cut meanwhile), so that the retry of
the record does not record it twice. The same on either engine."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.jobs.repository import get_step, requeue_unstarted
from app.jobs.states import StepStatus
from app.jobs.step_changes.interface import Finished
from app.jobs.step_repository import StepRun


def recorded_earlier(
    session: Session, run: StepRun, started_next: int | None = None
) -> Finished | None:
    """What an earlier try to record this very attempt's result left, when that try's
    commit landed but its answer was lost (the connection cut meanwhile): the step is
    COMPLETED under `run.fence`, which only this attempt holds. None when it is not.

    The next step's delivery is given if that step still waits, QUEUED, for the
    enqueue the lost answer kept from being sent (a duplicate delivery changes
    nothing); or if it is RUNNING under `started_next`, the fence this worker's own
    continuation gave it and then abandoned: it is put back on its queue under a new
    fence, still its first attempt (it never called its service)."""
    if not _left_by_this_attempt(session, run, StepStatus.COMPLETED, run.fence):
        return None
    if run.is_last:
        return Finished(job_finished=True)
    index = run.step_index + 1
    following = get_step(session, run.job_id, index)
    fence = None
    if following is not None and following.status == StepStatus.QUEUED:
        fence = following.fence
    elif following is not None and following.status == StepStatus.RUNNING:
        if following.fence == started_next:
            fence = requeue_unstarted(session, run.job_id, index, following.fence)
    if following is None or fence is None:
        return Finished(job_finished=False)
    return Finished(job_finished=False, next_queue=following.queue, next_fence=fence)


def retried_earlier(session: Session, run: StepRun) -> int | None:
    """The next attempt's fence when an earlier try to schedule this attempt's retry
    committed and its answer was lost: the step is RETRYING under the fence that
    `retry_step` gives after `run.fence`. None otherwise."""
    next_fence = run.fence + 1
    return (
        next_fence if _left_by_this_attempt(session, run, StepStatus.RETRYING, next_fence) else None
    )


def failed_earlier(session: Session, run: StepRun) -> bool:
    """Whether an earlier try to fail the job with this attempt's error committed and
    its answer was lost: the step is FAILED under `run.fence`."""
    return _left_by_this_attempt(session, run, StepStatus.FAILED, run.fence)


def _left_by_this_attempt(session: Session, run: StepRun, status: str, fence: int) -> bool:
    """The step is in `status` under `fence`, where only `run`'s attempt could put it."""
    step = get_step(session, run.job_id, run.step_index)
    return step is not None and step.status == status and step.fence == fence
