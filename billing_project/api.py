"""JSON API plumbing: body parsing with limits, and the one place AppError becomes HTTP."""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse

from .errors import AppError, InvalidRequest, ServiceUnavailable

logger = logging.getLogger("billing_project.api")

MAX_JSON_BODY_BYTES = 64 * 1024


def error_response(exc: AppError) -> JsonResponse:
    return JsonResponse(exc.to_dict(), status=exc.http_status)


def parse_json_body(request: HttpRequest, *, max_bytes: int = MAX_JSON_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object, or InvalidRequest (never a 500)."""
    length = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared = int(length)
    except ValueError:
        declared = 0
    if declared > max_bytes:
        raise InvalidRequest(f"request body is larger than {max_bytes} bytes", code="PAYLOAD_TOO_LARGE",
                             http_status=413)
    raw = request.body
    if len(raw) > max_bytes:
        raise InvalidRequest(f"request body is larger than {max_bytes} bytes", code="PAYLOAD_TOO_LARGE",
                             http_status=413)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def json_api(view: Callable[..., Any]) -> Callable[..., JsonResponse]:
    """Decorate a JSON view: AppError -> its status and code; DB outage -> 503; never a bare 500 page."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        try:
            result = view(request, *args, **kwargs)
        except AppError as exc:
            if exc.http_status >= 500:
                logger.warning("api error %s %s: %s", request.path, exc.code, exc.message)
            return error_response(exc)
        except (OperationalError, InterfaceError) as exc:
            logger.exception("database unavailable on %s", request.path)
            return error_response(ServiceUnavailable(f"database unavailable: {exc.__class__.__name__}",
                                                     code="DATABASE_UNAVAILABLE"))
        except DatabaseError:
            logger.exception("database error on %s", request.path)
            return error_response(ServiceUnavailable("database error", code="DATABASE_ERROR"))
        if isinstance(result, JsonResponse):
            return result
        status = 200
        if isinstance(result, tuple):
            result, status = result
        return JsonResponse(result, status=status)

    return wrapper
