"""The arithmetic steps: each reads the value the step before left (the job's input for
the first) and returns `{"value": int}`.

Each takes a moment (STEP_SECONDS), as the tasks it stands for did, so that a client
polling the job sees every partial result before the next one replaces it.
"""

from __future__ import annotations

import time
from typing import Any

from app.services.errors import PermanentStepError

STEP_SECONDS = 0.5


def _value(data: dict[str, Any], where: str) -> int:
    value = data.get("value")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PermanentStepError(
            f"{where}: value must be an integer, got {value!r}", code="bad_input"
        )
    return value


def add5(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    value = _value(input_data, "input_data")
    time.sleep(STEP_SECONDS)
    return {"value": value + 5}


def mul2(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    value = _value(context.get("add5", {}), "add5's output")
    time.sleep(STEP_SECONDS)
    return {"value": value * 2}


def sub10(input_data: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    value = _value(context.get("mul2", {}), "mul2's output")
    time.sleep(STEP_SECONDS)
    return {"value": value - 10}
