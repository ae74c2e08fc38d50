"""`kind: python` services: `package.module:function(input_data, context) -> dict`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from app.catalog import Service
from app.config import get_settings
from app.json_values import check_storable
from app.services.errors import StepError, output_too_large
from app.services.interrupt import CallInterrupted, Interruptible, Stopped, interruptible

if TYPE_CHECKING:
    from app.services import StepCall

StepFunction = Callable[[dict[str, Any], dict[str, Any]], Any]


@lru_cache(maxsize=256)
def resolve_target(target: str) -> StepFunction:
    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return cast(StepFunction, obj)


def call_python(
    service: Service, call: StepCall, handle: Interruptible | None = None
) -> dict[str, Any]:
    """Run the step; past `timeout_s`, or when `handle` is interrupted, it is stopped
    (app/services/interrupt.py: in a prefork pool's processes)."""
    assert service.target is not None
    handle = handle or Interruptible()
    try:
        function = resolve_target(service.target)
    except (ImportError, AttributeError, TypeError) as exc:
        raise StepError(
            f"cannot load {service.target}: {exc}", code="bad_target", retryable=False
        ) from exc
    try:
        with interruptible(handle, service.timeout_s):
            result = function(call.input_data, call.context)
    except StepError:
        raise
    except Stopped:
        if handle.requested:
            raise CallInterrupted(f"{service.target} interrupted") from None
        raise StepError(
            f"{service.target} ran past timeout_s={service.timeout_s:g}s",
            code="timeout",
            retryable=True,
        ) from None
    except Exception as exc:
        # Unknown failures in user code are retried; PermanentStepError opts out.
        raise StepError(
            f"{service.target} raised {type(exc).__name__}: {exc}",
            code="step_exception",
            retryable=True,
        ) from exc
    if result is None:
        return {}
    output = result if isinstance(result, dict) else {"result": result}
    # The same function returns the same thing on another attempt: neither is retried.
    try:
        size = check_storable(output)
    except (TypeError, ValueError) as exc:
        raise StepError(
            f"{service.target} returned what JSON cannot hold: {exc}",
            code="invalid_output",
            retryable=False,
        ) from exc
    limit = get_settings().max_step_output_bytes
    if size > limit:
        raise output_too_large(service, f"{size} bytes of JSON", limit)
    return output
