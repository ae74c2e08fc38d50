"""What a failed attempt records: always something the step row can hold."""

from __future__ import annotations

from app.models import ERROR_CODE_LENGTH
from app.services.errors import MAX_ERROR_CHARS, PermanentStepError, StepError


def test_text_a_text_column_cannot_hold_is_cleaned():
    error = StepError("a\x00b \ud800 c", code="bad\x00code", retryable=False)
    assert error.message == "a\ufffdb ? c"
    assert error.code == "bad\ufffdcode"
    assert str(error) == error.message


def test_long_messages_and_codes_are_cut_to_their_columns():
    error = PermanentStepError("m" * 50_000, code="c" * 500)
    assert len(error.message) == MAX_ERROR_CHARS
    assert error.message.endswith("…")
    assert len(error.code) == ERROR_CODE_LENGTH


def test_ordinary_errors_are_kept_as_they_are():
    error = StepError("HTTP 503: busy — try later", code="http_503", retryable=True)
    assert (error.message, error.code) == ("HTTP 503: busy — try later", "http_503")
