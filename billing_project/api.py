"""HTTP plumbing: JSON body parsing with limits, and the one place an AppError becomes HTTP
(`app_error_response`, which `json_api`, `org_view`, the idempotency guard and form views call)."""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse

from .errors import AppError, InvalidRequest, ServiceUnavailable

logger = logging.getLogger("billing_project.api")

MAX_JSON_BODY_BYTES = 64 * 1024
#: Deepest nesting accepted in a JSON body; MariaDB's JSON functions (the JSON_VALID CHECK on our JSON
#: columns) refuse documents nested deeper than 32.
MAX_JSON_DEPTH = 32


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _finite_decimal(text: str) -> Decimal:
    """A JSON number with a fraction or exponent, exactly as written (credits are never floats); one a
    double cannot hold (1e400) is refused like in _finite_float (MariaDB's JSON CHECK refuses it)."""
    _finite_float(text)
    return Decimal(text)


def _check_depth(data: Any) -> None:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))


def json_loads_strict(raw: bytes, *, exact_numbers: bool = True) -> Any:
    """Parse JSON the way our stores can hold it, or raise ValueError (never anything else):
    UTF-8 only; no NaN/Infinity and no number overflowing a float (MariaDB's JSON CHECK refuses
    them); no lone surrogate escapes like "\\ud800" (they cannot be encoded to utf8mb4); at most
    MAX_JSON_DEPTH levels; Python's own limit of 4300 digits per integer.
    Numbers with a fraction or exponent are `Decimal`s (exact: `12.10` stays 12.10); with
    `exact_numbers=False` floats, for a document stored verbatim as JSON (a Stripe event)."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant,
                          parse_float=_finite_decimal if exact_numbers else _finite_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    _check_depth(data)
    # A lone surrogate can only arrive as a \uD800-\uDFFF escape: re-encode only when one may be there.
    if b"\\ud" in raw or b"\\uD" in raw:
        try:
            json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone surrogate escape in a string") from None
    return data


def error_response(exc: AppError) -> JsonResponse:
    """The JSON face of an AppError: its status, code and message (and headers, e.g. Retry-After)."""
    response = JsonResponse(exc.to_dict(), status=exc.http_status)
    for name, value in getattr(exc, "headers", {}).items():  # e.g. Retry-After on a 429
        response[name] = value
    return response


def app_error_response(request: HttpRequest, exc: AppError, *, as_json: bool, redirect_to: str | None = None,
                       message: str | None = None) -> HttpResponse:
    """The one translation of an AppError into HTTP (every view decorator and form view calls this).

    - `as_json` (API clients): `error_response`; a 5xx is logged.
    - A browser's page (`redirect_to` None): a 404 is the 404 page, any other refusal the 403 page.
    - A browser's form post (`redirect_to` given): a 404 is the 404 page; AUTHENTICATION_REQUIRED carrying
      Stripe's hosted invoice URL sends the holder there (3-D Secure); anything else flashes the message
      (or `message`) and redirects to `redirect_to`.
    """
    if exc.http_status >= 500:
        logger.warning("api error %s %s: %s", request.path, exc.code, exc.message)
    # What the request's outcome was, also when a browser gets a redirect for it (the idempotency guard
    # keeps a key of a 5xx retryable and frees one of a refused-as-invalid request by this status).
    request.app_error_status = exc.http_status
    if as_json:
        return error_response(exc)
    if exc.http_status == 404:
        raise Http404(exc.message) from None
    if redirect_to is None:
        raise PermissionDenied(exc.message) from None
    finish_url = exc.extra.get("hostedInvoiceUrl")
    if exc.code == "AUTHENTICATION_REQUIRED" and finish_url:
        return HttpResponseRedirect(finish_url)
    messages.error(request, message or exc.message)
    return HttpResponseRedirect(redirect_to)


def parse_json_body(request: HttpRequest, *, max_bytes: int = MAX_JSON_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object (fractional numbers as `Decimal`), or InvalidRequest (never a 500)."""
    too_large = InvalidRequest(f"request body is larger than {max_bytes} bytes", code="PAYLOAD_TOO_LARGE",
                               http_status=413)
    length = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared = int(length)
    except ValueError:
        declared = 0
    if declared > max_bytes:
        raise too_large
    try:
        raw = request.body
    except RequestDataTooBig:  # no/lying Content-Length, past Django's DATA_UPLOAD_MAX_MEMORY_SIZE
        raise too_large from None
    if len(raw) > max_bytes:
        raise too_large
    try:
        data = json_loads_strict(raw)
    except ValueError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
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
            return app_error_response(request, exc, as_json=True)
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
