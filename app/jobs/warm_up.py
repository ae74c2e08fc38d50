"""Worker start-up: compile the statements a step runs before any step holds a slot."""

from __future__ import annotations

import uuid

from app.db import new_session
from app.jobs.repository import StepRun, load_step_run
from app.jobs.states import JobStatus, StepStatus
from app.jobs.step_changes import (
    complete_and_start_next,
    finish_step,
    park_named_step,
    park_step,
    start_named_step,
    start_step,
)


def prepare_statements() -> None:
    """Run every statement a worker runs per step against a job that does not exist, in
    a transaction rolled back, so that SQLAlchemy compiles and caches each now rather
    than on a first step's critical path (a compile costs milliseconds, several times
    what an execution does). Nothing matches the nil job id, so nothing is written.
    On SQLite a change stops at its first statement, which is all this warms there."""
    service = {"name": "warm-up", "queue": "warm-up", "max_attempts": 1}
    recipe = [{"name": "warm-up", "service": service}] * 2
    session = new_session()
    try:
        load_step_run(session, uuid.UUID(int=0), 0)
        for step_index in range(len(recipe)):
            run = StepRun(
                job_id=uuid.UUID(int=0),
                feature_name="warm-up",
                job_status=JobStatus.RUNNING,
                input_data={},
                context={},
                recipe_steps=recipe,
                step_index=step_index,
                step_name="warm-up",
                queue="warm-up",
                status=StepStatus.QUEUED,
                attempt=1,
                fence=1,
                max_attempts=1,
                next_step_fence=None if step_index == len(recipe) - 1 else 0,
            )
            start_step(session, run, run.fence)
            start_named_step(session, run.job_id, step_index, run.fence, "warm-up", "warm-up")
            park_step(session, run, {})
            park_named_step(session, run.job_id, step_index, run.fence, "warm-up", "warm-up", {})
            finish_step(session, run, run.fence, {})
            if not run.is_last:
                complete_and_start_next(session, run, run.fence, {})
    finally:
        session.rollback()
        session.close()
