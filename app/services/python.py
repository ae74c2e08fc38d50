"""`kind: python` services: `package.module:function(input_data, context) -> dict`."""

from __future__ import annotations

import importlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from app.catalog import Service
from app.config import get_settings
from app.json_values import check_storable
from app.services.errors import StepError, output_too_large

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


class _PastTimeout(BaseException):
    """Raised into a python step that runs past its service's `timeout_s`. Not an
    Exception, so that a step's own `except Exception` cannot swallow it."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with _PastTimeout after `seconds`, by SIGALRM. A prefork
    worker runs steps in its pool processes' main thread, where signals arrive. Where
    they do not (a threads pool), or where something else in the process already has
    an alarm set, the block runs unbounded rather than disturb it."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield
        return
    armed = True

    def expire(_signum: int, _frame: object) -> None:
        if armed:  # not once the block has ended and the alarm is being taken down
            raise _PastTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call_python(service: Service, call: StepCall) -> dict[str, Any]:
    assert service.target is not None
    try:
        function = resolve_target(service.target)
    except (ImportError, AttributeError, TypeError) as exc:
        raise StepError(
            f"cannot load {service.target}: {exc}", code="bad_target", retryable=False
        ) from exc
    try:
        with _deadline(service.timeout_s):
            result = function(call.input_data, call.context)
    except StepError:
        raise
    except _PastTimeout:
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
