"""What each event counts in the metrics fold, worked out by the database (PostgreSQL
and SQLite): attempts with their durations, waits from the moment a step was queued or
due, finished jobs with their durations; earlier events say when, only new ones count."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert, select

from app.db import session_scope
from app.events.metrics_counts import (
    JOB_DURATION,
    JOBS_CREATED,
    JOBS_FINISHED,
    STEP_ATTEMPTS,
    STEP_DURATION,
    STEP_WAIT,
)
from app.events.metrics_fold import fold_events, read_folded
from app.models import job_event_table
from tests.event_log_rows import Event, event_rows, write_jobs

pytestmark = pytest.mark.timeout(60)


def _folded() -> dict[tuple[str, tuple[str, ...], str], float]:
    fold_events()
    return {(a.metric, tuple(json.loads(a.labels)), a.part): a.value for a in read_folded()}


def test_a_retried_then_completed_step_and_its_job(backend):
    write_jobs(
        [
            [
                Event("JOB_CREATED"),
                Event("STEP_STARTED", 0, "svc", 1),
                Event("STEP_RETRYING", 0, "svc", 3, delay_s=2.0),  # due at 5
                Event("WAITING_FOR_SLOT", 0, "svc", 5.5),
                Event("STEP_STARTED", 0, "svc", 6),
                Event("STEP_COMPLETED", 0, "svc", 6.5),
                Event("JOB_COMPLETED", at=6.5),
            ]
        ],
        first_id=1,
    )
    folded = _folded()
    assert folded[(JOBS_CREATED, ("feat",), "")] == 1
    assert folded[(STEP_ATTEMPTS, ("svc", "retried"), "")] == 1
    assert folded[(STEP_ATTEMPTS, ("svc", "completed"), "")] == 1
    assert folded[(STEP_DURATION, ("svc",), "count")] == 2
    assert folded[(STEP_DURATION, ("svc",), "sum")] == pytest.approx(2.5)
    assert folded[(STEP_DURATION, ("svc",), "le=2.5")] == 1
    assert folded[(STEP_DURATION, ("svc",), "le=0.5")] == 1
    assert folded[(STEP_WAIT, ("svc",), "count")] == 2
    assert folded[(STEP_WAIT, ("svc",), "sum")] == pytest.approx(1 + 1)
    assert folded[(JOBS_FINISHED, ("feat", "COMPLETED"), "")] == 1
    assert folded[(JOB_DURATION, ("feat",), "sum")] == pytest.approx(6.5)
    assert folded[(JOB_DURATION, ("feat",), "le=10.0")] == 1


def test_only_events_after_the_cursor_count_but_earlier_ones_say_when(backend):
    started = [Event("JOB_CREATED"), Event("STEP_STARTED", 0, "svc", 2)]
    write_jobs([started], first_id=1)
    before = _folded()
    assert before[(STEP_WAIT, ("svc",), "count")] == 1
    # The job's failure lands later, as the next event of the same job.
    with session_scope() as session:
        job_id = session.scalars(select(job_event_table.c.job_id)).first()
        (row,) = event_rows(job_id, "feat", [Event("JOB_ERROR", 0, "svc", 5)], first_id=3)
        session.execute(insert(job_event_table), {**row, "seq": 3})
    after = _folded()
    assert after[(JOBS_CREATED, ("feat",), "")] == 1
    assert after[(STEP_WAIT, ("svc",), "count")] == 1
    assert after[(STEP_ATTEMPTS, ("svc", "failed"), "")] == 1
    assert after[(STEP_DURATION, ("svc",), "sum")] == pytest.approx(3)
    assert after[(JOBS_FINISHED, ("feat", "FAILED"), "")] == 1
    assert after[(JOB_DURATION, ("feat",), "sum")] == pytest.approx(5)


def test_a_cancel_ends_the_job_but_counts_no_attempt_and_a_stuck_queued_step_none(backend):
    cancelled = [Event("JOB_CREATED"), Event("STEP_STARTED", 0, "svc", 1)]
    cancelled.append(Event("JOB_CANCELLED", 0, "svc", 2))
    stuck = [Event("JOB_CREATED"), Event("JOB_ERROR", 0, "svc", 9)]
    write_jobs([cancelled, stuck], first_id=1)
    folded = _folded()
    assert folded[(JOBS_FINISHED, ("feat", "CANCELLED"), "")] == 1
    assert folded[(JOBS_FINISHED, ("feat", "FAILED"), "")] == 1
    assert (STEP_DURATION, ("svc",), "count") not in folded
    assert not any(key[0] == STEP_ATTEMPTS for key in folded)


def test_a_step_started_with_the_previous_ones_commit_waited_nothing(backend):
    write_jobs(
        [
            [
                Event("JOB_CREATED"),
                Event("STEP_STARTED", 0, "a", 0.5),
                Event("STEP_COMPLETED", 0, "a", 1),
                Event("STEP_STARTED", 1, "b", 1),
                Event("STEP_COMPLETED", 1, "b", 1.25),
                Event("JOB_COMPLETED", at=1.25),
            ]
        ],
        first_id=1,
    )
    folded = _folded()
    assert folded[(STEP_WAIT, ("b",), "sum")] == 0
    assert folded[(STEP_WAIT, ("b",), "le=0.005")] == 1
    assert folded[(STEP_DURATION, ("b",), "le=0.25")] == 1
    assert folded[(STEP_WAIT, ("a",), "le=0.5")] == 1


def test_a_restarted_attempt_counts_once_and_a_resume_starts_a_new_wait(backend):
    """Recovery starts a step again (a second STEP_STARTED, no wait of its own); the
    failure ends the latest start; a resume queues the step anew and the failed
    attempt is not counted twice."""
    write_jobs(
        [
            [
                Event("JOB_CREATED"),
                Event("STEP_STARTED", 0, "svc", 1),
                Event("STEP_STARTED", 0, "svc", 4),
                Event("JOB_ERROR", 0, "svc", 4.5),
                Event("JOB_RESUMED", 0, "svc", 10),
                Event("STEP_STARTED", 0, "svc", 12),
                Event("STEP_COMPLETED", 0, "svc", 12.01),
                Event("JOB_COMPLETED", at=12.01),
            ]
        ],
        first_id=1,
    )
    folded = _folded()
    assert folded[(STEP_WAIT, ("svc",), "count")] == 2
    assert folded[(STEP_WAIT, ("svc",), "sum")] == pytest.approx(1 + 2)
    assert folded[(STEP_ATTEMPTS, ("svc", "failed"), "")] == 1
    assert folded[(STEP_ATTEMPTS, ("svc", "completed"), "")] == 1
    assert folded[(STEP_DURATION, ("svc",), "count")] == 2
    assert folded[(STEP_DURATION, ("svc",), "sum")] == pytest.approx(0.5 + 0.01)
    assert folded[(JOBS_FINISHED, ("feat", "FAILED"), "")] == 1
    assert folded[(JOBS_FINISHED, ("feat", "COMPLETED"), "")] == 1
    assert folded[(JOB_DURATION, ("feat",), "sum")] == pytest.approx(4.5 + 12.01)
