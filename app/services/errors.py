"""Step failures: retryable (with an optional server-given delay) or permanent."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.catalog import Service


class StepError(Exception):
    def __init__(
        self,
        message: str,
        *,
        code: str,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class PermanentStepError(StepError):
    """Raise from a `kind: python` step to fail the job without retrying."""

    def __init__(self, message: str, code: str = "step_failed") -> None:
        super().__init__(message, code=code, retryable=False)


class RetryableStepError(StepError):
    """Raise from a `kind: python` step to ask for another attempt."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(
            message, code="step_retryable", retryable=True, retry_after_s=retry_after_s
        )


def output_too_large(service: Service, what: str, limit: int) -> StepError:
    """A step output over MAX_STEP_OUTPUT_BYTES: permanent, since the same call gives the
    same output (raise the limit, then resume the job)."""
    return StepError(
        f"{service.name} returned {what}, over MAX_STEP_OUTPUT_BYTES={limit}",
        code="output_too_large",
        retryable=False,
    )
