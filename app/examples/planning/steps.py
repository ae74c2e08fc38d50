"""The planning steps: a work breakdown per deliverable, its tasks, the dependencies
between them, and a schedule that honours those dependencies (each task starts on the
day its last prerequisite ends). Deterministic: the same input gives the same plan.
"""

from __future__ import annotations

import time
from typing import Any

from app.services.errors import PermanentStepError

# The phases each deliverable goes through, and the days each takes.
PHASES = (("design", 2), ("build", 3), ("review", 1))
STEP_SECONDS = 0.3


def wbs(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    project = input_data.get("project")
    deliverables = input_data.get("deliverables")
    if not isinstance(project, str) or not project.strip():
        raise PermanentStepError("input_data.project must be a non-empty string", code="bad_input")
    if not isinstance(deliverables, list) or not all(isinstance(d, str) for d in deliverables):
        raise PermanentStepError(
            "input_data.deliverables must be a list of strings", code="bad_input"
        )
    time.sleep(STEP_SECONDS)
    packages = [{"id": f"WP{i + 1}", "deliverable": d} for i, d in enumerate(deliverables)]
    return {"project": project, "work_packages": packages}


def tasks(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    time.sleep(STEP_SECONDS)
    found = [
        {
            "id": f"{package['id']}.{phase}",
            "name": f"{phase} {package['deliverable']}",
            "days": d,
        }
        for package in context["wbs"]["work_packages"]
        for phase, d in PHASES
    ]
    return {"tasks": found}


def dependencies(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Within a work package the phases run in order; every review waits for the build
    of the package before it too (one reviewer, one deliverable at a time)."""
    time.sleep(STEP_SECONDS)
    ids = [task["id"] for task in context["tasks"]["tasks"]]
    edges = []
    for package in context["wbs"]["work_packages"]:
        phases = [f"{package['id']}.{phase}" for phase, _ in PHASES]
        edges += [{"before": a, "after": b} for a, b in zip(phases, phases[1:], strict=False)]
    reviews = [task_id for task_id in ids if task_id.endswith(".review")]
    edges += [{"before": a, "after": b} for a, b in zip(reviews, reviews[1:], strict=False)]
    return {"dependencies": edges}


def schedule(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    time.sleep(STEP_SECONDS)
    days = {task["id"]: task["days"] for task in context["tasks"]["tasks"]}
    before: dict[str, list[str]] = {task_id: [] for task_id in days}
    for edge in context["dependencies"]["dependencies"]:
        before[edge["after"]].append(edge["before"])
    ends: dict[str, int] = {}

    def end_of(task_id: str) -> int:
        if task_id not in ends:
            start = max((end_of(b) for b in before[task_id]), default=0)
            ends[task_id] = start + days[task_id]
        return ends[task_id]

    plan = [
        {"task": task_id, "start_day": end_of(task_id) - days[task_id], "end_day": end_of(task_id)}
        for task_id in days
    ]
    return {"schedule": plan, "total_days": max((t["end_day"] for t in plan), default=0)}
