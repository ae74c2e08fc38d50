"""Step failures: retryable (with an optional server-given delay) or permanent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.models import ERROR_CODE_LENGTH

if TYPE_CHECKING:
    from app.catalog import Service


# An error is stored on the step and the job and sent in an event: a service's error
# page or an exception's text is kept to this many characters.
MAX_ERROR_CHARS = 2000


def storable_text(text: str, limit: int) -> str:
    """`text` as a text column can hold it: no NUL character (PostgreSQL text has none:
    U+FFFD instead), no lone surrogate (not UTF-8: "?"), and no more than `limit`
    characters (the cut is marked)."""
    text = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StepError(Exception):
    """A failed attempt; its message and code are cut to what the step row holds, so
    recording the failure can never fail on the text a service or a step produced."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retryable: bool,
        retry_after_s: float | None = None,
    ) -> None:
        message = storable_text(message, MAX_ERROR_CHARS)
        super().__init__(message)
        self.message = message
        self.code = storable_text(code, ERROR_CODE_LENGTH)
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
