"""Start-up warm-ups: what a process would otherwise do lazily on its first piece of
work, while a client waits or a step holds a slot (connections, lazy imports, compiled
statements)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import structlog
from sqlalchemy.orm import Session

from app.catalog import Catalog
from app.db import new_session
from app.jobs.dispatch import connect_broker
from app.jobs.repository import StepRun, load_step_run
from app.jobs.service import create_job
from app.jobs.states import JobStatus, StepStatus
from app.jobs.step_changes import (
    NamedStep,
    NextStepMoved,
    complete_and_start_next,
    finish_step,
    park_named_step,
    park_step,
    start_named_step,
    start_step,
)

log = structlog.get_logger(__name__)


def warm_up_in_background(*steps: Callable[[], object]) -> None:
    """Run `steps` in a daemon thread: start-up must not wait on a slow database or
    broker, and should one fail, the first piece of work sets things up the usual way."""

    def run() -> None:
        try:
            for step in steps:
                step()
        except Exception as exc:
            log.warning("warm-up failed", error=str(exc))

    threading.Thread(target=run, name="cao-warm-up", daemon=True).start()


@contextmanager
def _rolled_back() -> Iterator[Session]:
    """A session whose every change is rolled back (with its after-commit hooks)."""
    session = new_session()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def prepare_job_creation(catalog: Catalog) -> None:
    """Create a job of the first feature in a transaction rolled back (opening a
    database connection and compiling its insert), and connect to the broker. The first
    job a fresh API process creates then takes milliseconds, not a tenth of a second."""
    if catalog.features:
        with _rolled_back() as session:  # the job goes, and so does its enqueue
            create_job(session, catalog, feature_name=next(iter(catalog.features)), input_data={})
    connect_broker()


def prepare_statements() -> None:
    """Run every statement a worker runs per step against a job that does not exist, in
    a transaction rolled back, so that SQLAlchemy compiles and caches each now rather
    than on a first step's critical path (a compile costs milliseconds, several times
    what an execution does). Nothing matches the nil job id, so nothing is written.
    On SQLite a change stops at its first statement, which is all this warms there."""
    service = {"name": "warm-up", "queue": "warm-up", "max_attempts": 1}
    recipe = [{"name": "warm-up", "service": service}] * 2
    with _rolled_back() as session:
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
            named = NamedStep(run.job_id, step_index, run.fence, "warm-up", "warm-up")
            start_named_step(session, named)
            park_step(session, run, {})
            park_named_step(session, named, {})
            finish_step(session, run, run.fence, {})
            if not run.is_last:
                with suppress(NextStepMoved):  # no next step to find, as intended
                    complete_and_start_next(session, run, run.fence, {})
