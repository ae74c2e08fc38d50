"""The events a step change records, drafted before their seqs are known: the same on
either engine (the change reserves the seqs and inserts them)."""

from __future__ import annotations

from typing import Any

from app.config import get_settings
from app.events.log import EventDraft
from app.events.types import EventType, completed_data
from app.jobs.step_repository import StepRun
from app.json_values import dumps


def about(run: StepRun, event_type: EventType, data: dict[str, Any] | None = None) -> EventDraft:
    """An event about `run`'s step and attempt."""
    return EventDraft(
        type=event_type,
        step_index=run.step_index,
        step_name=run.step_name,
        attempt=run.attempt,
        data=data or {},
    )


def completed_events(
    run: StepRun, output: dict[str, Any], *, next_started: bool = False
) -> list[EventDraft]:
    """STEP_COMPLETED, and what follows it in the same commit: JOB_COMPLETED after the
    last step, or the next step's STEP_STARTED when it was started with this result."""
    limit = get_settings().event_output_max_bytes
    data = completed_data(output, len(dumps(output)), limit)
    drafts = [about(run, EventType.STEP_COMPLETED, data)]
    if run.is_last:
        drafts.append(EventDraft(type=EventType.JOB_COMPLETED))
    elif next_started:
        spec = run.recipe_steps[run.step_index + 1]
        drafts.append(
            EventDraft(
                type=EventType.STEP_STARTED,
                step_index=run.step_index + 1,
                step_name=spec["name"],
                attempt=1,
                data={},
            )
        )
    return drafts
