"""The error envelope as the OpenAPI document shows it, and the error answers each route
declares, so that a client generated from /openapi.json knows every error's shape."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.json_values import utf8_text


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable: e.g. job_not_found.")
    message: str = Field(description="What is wrong, for a person.")
    details: Any = Field(None, description="More, where the code has any (e.g. per field).")


class ErrorEnvelope(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    success: Literal[False] = False
    error: ErrorBody


_WHY = {
    400: "Malformed request: invalid JSON (invalid_json) or a cursor not from a previous "
    "page (invalid_cursor).",
    401: "No API key (missing_api_key), or an unknown one (invalid_api_key), when API "
    "keys are configured.",
    403: "The key's role may not do this (operator_required).",
    404: "No such job, or one of another tenant (job_not_found).",
    409: "The job's status does not allow this action (job_not_resumable, "
    "job_not_cancellable), or an Idempotency-Key was used with another body "
    "(idempotency_key_reused).",
    413: "The request body is larger than MAX_BODY_BYTES (payload_too_large).",
    422: "A field is missing, of the wrong type or out of range (validation_error), or "
    "the feature is unknown (unknown_feature).",
    429: "The API key already holds MAX_STREAMS_PER_KEY event streams (too_many_streams).",
    500: "An unexpected error (internal_error); nothing half-written is left behind.",
    503: "The database is unavailable (database_unavailable), or, from /health/ready, "
    "the database or Redis does not answer (not_ready); retry after Retry-After.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: each status answered in the envelope."""
    return {status: {"model": ErrorEnvelope, "description": _WHY[status]} for status in statuses}


# What any route of /api/v1 may answer, whatever it does.
ANY_ROUTE = errors(500)


class Utf8JSONResponse(JSONResponse):
    """Every JSON answer of the API. A lone surrogate stored before input was checked for
    it has no UTF-8 form: it is sent as U+FFFD rather than failing the read with a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return utf8_text(text).encode("utf-8")
