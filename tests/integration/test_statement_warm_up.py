"""A worker compiles its step statements at start-up, not while a step holds a slot; an
API its job insert, not while its first client waits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine.default import CACHE_MISS

from app.db import get_engine, session_scope, statement_scope
from app.jobs import repository as repo
from app.jobs import step_changes as changes
from app.jobs.service import create_job
from app.jobs.warm_up import prepare_job_creation, prepare_statements
from app.models import Job, JobEvent, JobStep
from app.queues import queue_depths
from tests.harness import UNCONSUMED_PAIR as _CATALOG


@pytest.fixture
def compiled() -> Iterator[list[str]]:
    """The SQL of every statement the engine compiles (misses its cache) from now on."""
    misses: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, sql: str, _params: Any, context: Any, _many: Any):
        if context is not None and context.cache_hit == CACHE_MISS:
            misses.append(sql)

    engine = get_engine()
    event.listen(engine, "after_cursor_execute", on_execute)
    try:
        yield misses
    finally:
        event.remove(engine, "after_cursor_execute", on_execute)


def _row_counts() -> list[int | None]:
    with session_scope() as session:
        tables = (Job, JobStep, JobEvent)
        return [session.scalar(select(func.count()).select_from(table)) for table in tables]


def _run(job_id: uuid.UUID, step_index: int) -> repo.StepRun:
    with statement_scope() as session:
        run = repo.load_step_run(session, job_id, step_index)
    assert run is not None
    return run


# PostgreSQL: there each change is one statement, which the warm-up runs whole. On
# SQLite a change stops at its first statement that matches nothing.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_after_the_warm_up_a_job_s_step_changes_compile_nothing(backend, compiled):
    with session_scope() as session:
        finished_by_broker, continued, parked, named = (
            create_job(session, _CATALOG, feature_name="pair", input_data={}).job.id
            for _ in range(4)
        )
    before = _row_counts()
    compiled.clear()

    prepare_statements()
    assert compiled, "the warm-up compiled nothing"
    assert _row_counts() == before, "the warm-up wrote rows"

    compiled.clear()
    # Each path a delivery takes: claim, result with the next step queued, the last
    # step's result, a result that starts the next step here, a park, and the claim of
    # a delivery that names its service.
    for step_index in (0, 1):
        run = _run(finished_by_broker, step_index)
        with statement_scope() as session:
            assert changes.start_step(session, run, run.fence) is not None
        with statement_scope() as session:
            assert changes.finish_step(session, run, run.fence, {"n": step_index}) is not None
    run = _run(continued, 0)
    with statement_scope() as session:
        assert changes.start_step(session, run, run.fence) is not None
    with session_scope() as session:
        assert changes.complete_and_start_next(session, run, run.fence, {}) is not None
    run = _run(parked, 0)
    with statement_scope() as session:
        assert changes.park_step(session, run, {"service": "one", "limit": 1})
    with statement_scope() as session:
        step = changes.NamedStep(named, 0, 1, "one", "unconsumed")
        assert changes.start_named_step(session, step) is not None
    assert compiled == [], "compiled on a step's critical path:\n" + "\n\n".join(compiled)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"], indirect=True)
def test_the_api_warm_up_compiles_the_job_insert_and_creates_no_job(backend, compiled):
    rows, messages = _row_counts(), queue_depths(["unconsumed"])

    prepare_job_creation(_CATALOG)
    assert compiled, "the warm-up compiled nothing"
    assert _row_counts() == rows, "the warm-up wrote rows"
    assert queue_depths(["unconsumed"]) == messages, "the warm-up sent a step message"

    compiled.clear()
    with session_scope() as session:
        create_job(session, _CATALOG, feature_name="pair", input_data={"n": 1})
    assert compiled == [], "compiled while creating a job:\n" + "\n\n".join(compiled)
