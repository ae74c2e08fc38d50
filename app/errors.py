"""One error base class carrying its HTTP status and a stable code, and the envelope."""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status_code = 400
    code = "bad_request"
    # Response headers the status calls for (RFC 9110: a 401 names its challenge).
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.code, self.message, self.details)


def error_envelope(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, "details": details}}


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"


class JobNotFound(NotFound):
    code = "job_not_found"

    def __init__(self, job_id: object) -> None:
        super().__init__(f"job {job_id} does not exist")


class UnknownFeature(GatewayError):
    status_code = 422
    code = "unknown_feature"


class Conflict(GatewayError):
    status_code = 409
    code = "conflict"


class Unauthorized(GatewayError):
    status_code = 401
    code = "unauthorized"
    # The key goes as a bearer token (or in X-API-Key, which has no challenge scheme).
    headers = {"WWW-Authenticate": 'Bearer realm="cao"'}


class Forbidden(GatewayError):
    status_code = 403
    code = "forbidden"


class NotReady(GatewayError):
    """The database or Redis does not answer: the process cannot serve yet."""

    status_code = 503
    code = "not_ready"
    headers = {"Retry-After": "1"}
