"""Recording a step's result: success (queue the next step), failure, or a retry.

Every write is fenced: a result is committed only while the step is still RUNNING
under the attempt that produced it, so a late or duplicate result changes nothing
(DISCARDED). A result in hand is kept until recorded while the database cannot be
reached: giving up would leave the step to Beat, which calls the service again. A
retry after a commit that landed (its answer lost) writes nothing again; it
recognises that commit and sends what the lost answer kept back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from structlog.typing import FilteringBoundLogger

from app.catalog import Service
from app.db import session_scope, statement_scope, while_database_unreachable
from app.events.log import append_event
from app.events.types import EventType
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.backoff import retry_delay
from app.jobs.delivery import Outcome, warn_unreachable
from app.jobs.dispatch import Delivery
from app.jobs.outbox import send_after_commit
from app.jobs.repository import StepRun
from app.services import StepError


def record_success(
    run: StepRun, output: dict[str, Any], started_next: int | None, bound: FilteringBoundLogger
) -> Outcome:
    """Commit the result and queue the next step. `started_next` is the fence the next
    step got if the commit that started it landed while its answer was lost
    (app/jobs/execute.py): that step is then RUNNING under it with no worker, and this
    puts it back on its queue."""
    return _kept_until_recorded(partial(_commit_success, run, output, started_next, bound), bound)


def record_failure(
    run: StepRun, service: Service, error: StepError, bound: FilteringBoundLogger
) -> Outcome:
    """Schedule the next attempt of a retryable failure with attempts left, else fail
    the step and its job."""
    return _kept_until_recorded(partial(_commit_failure, run, service, error, bound), bound)


def _kept_until_recorded(record: Callable[[], Outcome], bound: FilteringBoundLogger) -> Outcome:
    """`record()`, retried while the database cannot be reached."""
    retrying = partial(warn_unreachable, bound, "recording the result")
    try:
        return record()  # as a rule: without the retry machinery's 30-40 µs
    except OperationalError as error:
        retrying(error, 0.0)  # at once: a dropped pooled connection reconnects
    return while_database_unreachable(retrying)(record)


def _commit_success(
    run: StepRun, output: dict[str, Any], started_next: int | None, bound: FilteringBoundLogger
) -> Outcome:
    with statement_scope() as session:
        finished = changes.finish_step(session, run, run.fence, output)
        if finished is None:
            finished = changes.recorded_earlier(session, run, started_next)
            if finished is None:
                bound.warning("late result discarded: the step moved on without this attempt")
                return Outcome.DISCARDED
            _found_earlier_try(bound, "result")
        queue, fence = finished.next_queue, finished.next_fence
        if queue is not None and fence is not None:
            # The next step's delivery goes out before the events are published.
            service = run.next_spec()["name"]
            delivery = Delivery.of(run.job_id, run.step_index + 1, fence, queue, service)
            send_after_commit(session, delivery, first=True)
    bound.info("step completed", job_finished=finished.job_finished)
    return Outcome.COMPLETED


def _commit_failure(
    run: StepRun, service: Service, error: StepError, bound: FilteringBoundLogger
) -> Outcome:
    with session_scope() as session:
        if error.retryable and run.attempt < run.max_attempts:
            return _schedule_retry(session, run, service, error, bound)
        if not repo.fail_step(
            session,
            run.job_id,
            run.step_index,
            run.fence,
            error=error.message,
            code=error.code,
            retryable=error.retryable,
        ):
            if not changes.failed_earlier(session, run):
                return _late_failure(bound, error)
            _found_earlier_try(bound, "failure")
            return Outcome.FAILED
        append_event(
            session,
            run.job_id,
            EventType.JOB_ERROR,
            step_index=run.step_index,
            step_name=run.step_name,
            attempt=run.attempt,
            data={"error": error.message, "code": error.code, "retryable": error.retryable},
        )
    bound.warning("step failed; job failed", error=error.message, retryable=error.retryable)
    return Outcome.FAILED


def _found_earlier_try(bound: FilteringBoundLogger, what: str) -> None:
    bound.warning(f"{what} recorded by an earlier try whose commit's answer was lost")


def _late_failure(bound: FilteringBoundLogger, error: StepError) -> Outcome:
    bound.warning(
        "late failure discarded: the step moved on without this attempt", error=error.message
    )
    return Outcome.DISCARDED


def _schedule_retry(
    session: Session, run: StepRun, service: Service, error: StepError, bound: FilteringBoundLogger
) -> Outcome:
    delay = retry_delay(service.backoff, run.attempt, error.retry_after_s)
    next_fence = repo.retry_step(
        session, run.job_id, run.step_index, run.fence, error=error.message, code=error.code
    )
    if next_fence is None:
        next_fence = changes.retried_earlier(session, run)
        if next_fence is None:
            return _late_failure(bound, error)
        _found_earlier_try(bound, "retry")  # the enqueue below is what its answer held back
    else:
        append_event(
            session,
            run.job_id,
            EventType.STEP_RETRYING,
            step_index=run.step_index,
            step_name=run.step_name,
            attempt=run.attempt,
            data={
                "error": error.message,
                "code": error.code,
                "delay_s": round(delay, 3),
                "next_attempt": run.attempt + 1,
            },
        )
    # The retry waits in the broker (an ETA message), not in a worker slot.
    delivery = Delivery.of(run.job_id, run.step_index, next_fence, run.queue, service.name, delay)
    send_after_commit(session, delivery)
    bound.info("step will retry", error=error.message, delay_s=round(delay, 3))
    return Outcome.RETRYING
