"""What each event counts in the metrics fold: attempts with their durations, waits from
the moment a step was queued or due, finished jobs with their durations."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.events.metrics_fold import (
    JOB_DURATION,
    JOBS_CREATED,
    JOBS_FINISHED,
    STEP_ATTEMPTS,
    STEP_DURATION,
    STEP_WAIT,
    tally_events,
)
from app.events.metrics_store import FoldEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _job(*events: tuple[str, int | None, str | None, float, float | None]) -> list[FoldEvent]:
    """One job's events from (type, step_index, service, seconds after T0, delay_s)."""
    job_id = uuid.uuid4()
    return [
        FoldEvent(job_id, 100 + n, kind, "feat", step, service, T0 + timedelta(seconds=at), delay)
        for n, (kind, step, service, at, delay) in enumerate(events)
    ]


def _value(tally, metric: str, part: str, *labels: str) -> float:
    return tally.increments.get((metric, json.dumps(labels), part), 0.0)


def test_a_retried_then_completed_step_and_its_job():
    events = _job(
        ("JOB_CREATED", None, None, 0, None),
        ("STEP_STARTED", 0, "svc", 1, None),
        ("STEP_RETRYING", 0, "svc", 3, 2.0),  # due at 5
        ("STEP_STARTED", 0, "svc", 6, None),
        ("STEP_COMPLETED", 0, "svc", 6.5, None),
        ("JOB_COMPLETED", None, None, 6.5, None),
    )
    tally = tally_events(events, after_id=0)
    assert _value(tally, JOBS_CREATED, "", "feat") == 1
    assert _value(tally, STEP_ATTEMPTS, "", "svc", "retried") == 1
    assert _value(tally, STEP_ATTEMPTS, "", "svc", "completed") == 1
    assert _value(tally, STEP_DURATION, "count", "svc") == 2
    assert _value(tally, STEP_DURATION, "sum", "svc") == pytest.approx(2.5)
    assert _value(tally, STEP_WAIT, "count", "svc") == 2
    assert _value(tally, STEP_WAIT, "sum", "svc") == pytest.approx(1 + 1)
    assert _value(tally, JOBS_FINISHED, "", "feat", "COMPLETED") == 1
    assert _value(tally, JOB_DURATION, "sum", "feat") == pytest.approx(6.5)
    assert _value(tally, JOB_DURATION, "le=10.0", "feat") == 1


def test_only_events_after_the_cursor_count_but_earlier_ones_say_when():
    events = _job(
        ("JOB_CREATED", None, None, 0, None),
        ("STEP_STARTED", 0, "svc", 2, None),
        ("JOB_ERROR", 0, "svc", 5, None),
    )
    tally = tally_events(events, after_id=events[1].id)  # only the JOB_ERROR is new
    assert _value(tally, JOBS_CREATED, "", "feat") == 0
    assert _value(tally, STEP_WAIT, "count", "svc") == 0
    assert _value(tally, STEP_ATTEMPTS, "", "svc", "failed") == 1
    assert _value(tally, STEP_DURATION, "sum", "svc") == pytest.approx(3)
    assert _value(tally, JOBS_FINISHED, "", "feat", "FAILED") == 1
    assert _value(tally, JOB_DURATION, "sum", "feat") == pytest.approx(5)


def test_a_cancel_ends_the_job_but_counts_no_attempt_and_a_stuck_queued_step_none():
    cancelled = _job(
        ("JOB_CREATED", None, None, 0, None),
        ("STEP_STARTED", 0, "svc", 1, None),
        ("JOB_CANCELLED", 0, "svc", 2, None),
    )
    stuck = _job(("JOB_CREATED", None, None, 0, None), ("JOB_ERROR", 0, "svc", 9, None))
    tally = tally_events(cancelled + stuck, after_id=0)
    assert _value(tally, JOBS_FINISHED, "", "feat", "CANCELLED") == 1
    assert _value(tally, JOBS_FINISHED, "", "feat", "FAILED") == 1
    assert _value(tally, STEP_DURATION, "count", "svc") == 0
    assert not any(key[0] == STEP_ATTEMPTS for key in tally.increments)


def test_a_step_started_with_the_previous_ones_commit_waited_nothing():
    events = _job(
        ("JOB_CREATED", None, None, 0, None),
        ("STEP_STARTED", 0, "a", 0.5, None),
        ("STEP_COMPLETED", 0, "a", 1, None),
        ("STEP_STARTED", 1, "b", 1, None),
        ("STEP_COMPLETED", 1, "b", 1.25, None),
        ("JOB_COMPLETED", None, None, 1.25, None),
    )
    tally = tally_events(events, after_id=0)
    assert _value(tally, STEP_WAIT, "sum", "b") == 0
    assert _value(tally, STEP_WAIT, "le=0.005", "b") == 1
    assert _value(tally, STEP_DURATION, "le=0.25", "b") == 1
