"""The one exception hierarchy of the project. Services raise these; `billing_project.api`
translates them to HTTP in exactly one place.

Every error has a stable machine-readable `code` (clients switch on it), a human message,
an HTTP status, and optional extra JSON fields (e.g. `remainingCredits` on a 402).
"""
from __future__ import annotations

from typing import Any


class AppError(Exception):
    code = "ERROR"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None, http_status: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if http_status is not None:
            self.http_status = http_status
        self.extra = extra or {}

    def to_dict(self) -> dict[str, Any]:
        return {"success": False, "error": {"code": self.code, "message": self.message}, **self.extra}


class InvalidRequest(AppError):
    code = "INVALID_REQUEST"
    http_status = 400


class AuthenticationRequired(AppError):
    code = "MISSING_TOKEN"
    http_status = 401


class PermissionDeniedError(AppError):
    code = "FORBIDDEN"
    http_status = 403


class NotFound(AppError):
    code = "NOT_FOUND"
    http_status = 404


class Conflict(AppError):
    code = "CONFLICT"
    http_status = 409


class ServiceUnavailable(AppError):
    code = "SERVICE_UNAVAILABLE"
    http_status = 503
