"""`kind: python` services: `package.module:function(input_data, context) -> dict`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from app.catalog import Service
from app.services.errors import StepError

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
    return obj


def call_python(service: Service, call: StepCall) -> dict[str, Any]:
    assert service.target is not None
    try:
        function = resolve_target(service.target)
    except (ImportError, AttributeError, TypeError) as exc:
        raise StepError(
            f"cannot load {service.target}: {exc}", code="bad_target", retryable=False
        ) from exc
    try:
        result = function(call.input_data, call.context)
    except StepError:
        raise
    except Exception as exc:
        # Unknown failures in user code are retried; PermanentStepError opts out.
        raise StepError(
            f"{service.target} raised {type(exc).__name__}: {exc}",
            code="step_exception",
            retryable=True,
        ) from exc
    if result is None:
        return {}
    return result if isinstance(result, dict) else {"result": result}
