"""The step changes on PostgreSQL: each change one statement of data-modifying WITH
clauses (composed as compose.py says), so that in autocommit a change is one round trip
and commits whole or not at all. This package implements `StepChanges`
(app/jobs/step_changes/interface.py), each function doing what its namesake in
app/jobs/step_changes/__init__.py says; each statement is documented where it is
built, and docs/architecture.md shows the SQL they compile to (scripts/statements_doc.py)."""

from __future__ import annotations

from app.jobs.step_changes.postgres.claims import (
    park_named_step,
    park_named_step_at_once,
    park_step,
    park_step_at_once,
    start_named_step,
    start_named_step_at_once,
    start_step,
    start_step_at_once,
)
from app.jobs.step_changes.postgres.creation import (
    insert_job,
    insert_job_at_once,
    insert_jobs,
)
from app.jobs.step_changes.postgres.results import (
    complete_and_start_next,
    continue_at_once,
    finish_last_step_at_once,
    finish_step,
    finish_step_at_once,
)

__all__ = [
    "complete_and_start_next",
    "continue_at_once",
    "finish_last_step_at_once",
    "finish_step",
    "finish_step_at_once",
    "insert_job",
    "insert_job_at_once",
    "insert_jobs",
    "park_named_step",
    "park_named_step_at_once",
    "park_step",
    "park_step_at_once",
    "start_named_step",
    "start_named_step_at_once",
    "start_step",
    "start_step_at_once",
]
