"""Event types and the wire shape of an event."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from app.models import BIGINT_MAX, INTEGER_MAX


class EventType(StrEnum):
    JOB_CREATED = "JOB_CREATED"
    WAITING_FOR_SLOT = "WAITING_FOR_SLOT"
    STEP_STARTED = "STEP_STARTED"
    STEP_RETRYING = "STEP_RETRYING"
    STEP_COMPLETED = "STEP_COMPLETED"
    JOB_COMPLETED = "JOB_COMPLETED"
    JOB_ERROR = "JOB_ERROR"
    JOB_CANCELLED = "JOB_CANCELLED"
    JOB_RESUMED = "JOB_RESUMED"


# The largest positions a client can resume after: a job's `seq` is an Integer column,
# the global `id` a BigInteger one. Larger ones are refused as input.
MAX_SEQ = INTEGER_MAX
MAX_EVENT_ID = BIGINT_MAX

TERMINAL_EVENTS = frozenset({EventType.JOB_COMPLETED, EventType.JOB_ERROR, EventType.JOB_CANCELLED})


class PublishedEvent(BaseModel):
    """An event as its writer publishes it after commit. On PostgreSQL `id` is null:
    the global id is given later by the sequencer (app/events/sequencer.py)."""

    id: int | None
    seq: int
    type: str
    job_id: str
    feature_name: str
    step_index: int | None
    step_name: str | None
    attempt: int | None
    progress: int
    ts: datetime
    data: dict[str, Any]


class EventOut(PublishedEvent):
    """An event as clients see it: always with its global id."""

    id: int


def completed_data(output: dict[str, Any], size: int, limit: int) -> dict[str, Any]:
    """STEP_COMPLETED's data for an output of `size` JSON bytes: the output itself up to
    `limit` (EVENT_OUTPUT_MAX_BYTES), else a mark: GET /jobs/{job_id} has it."""
    if size <= limit:
        return {"output": output}
    return output_left_out({"output": output}, size)


def output_left_out(data: dict[str, Any], size: int) -> dict[str, Any]:
    """`data` without its output, marked `output_truncated` with the size left out."""
    return {**data, "output": None, "output_truncated": True, "output_bytes": size}
