"""Incoming idempotency for the money-moving browser endpoints (view layer).

    @require_POST
    @org_view(require_admin=True)
    @idempotent_request("credits-topup")
    def credits_topup(request, membership): ...

A request carrying a key (the `Idempotency-Key` header; for dashboard forms the hidden one-time
`idempotencyKey` field rendered by `{% idempotency_token %}`) runs at most once per (org, user, key):
- the first request claims the key with an INSERT under a UNIQUE constraint (committed before the
  view runs, so a concurrent duplicate collides in the database, not in an `.exists()` check);
- a repeat gets the first response back (same status, body, redirect and flash messages, plus an
  `Idempotent-Replayed: true` header) and runs nothing: no second purchase, no second charge;
- a concurrent repeat waits (polls, with a deadline) for the first to finish, then replays it; past
  the deadline it is 409 IDEMPOTENCY_REQUEST_IN_PROGRESS (retry later with the same key);
- the same key with another request (endpoint, query or body) is 409 IDEMPOTENCY_KEY_REUSED;
- a request refused as invalid (400/413/422) frees its key (nothing ran: fix it and retry with the
  same key); a 5xx or an exception marks the key failed: the outcome is unknown, so a retry with the
  same key runs again and re-drives the same intent (`request.idempotency.credit_purchase_id`), which
  calls Stripe with the same idempotency key as the first attempt: Stripe replays, never charges twice.
Every other outcome is final for the key, a declined card included (Stripe answers a repeated key the
same way); trying again is a new request with a new key (docs/billing-rules.md).

Requests without a key behave as before.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone

from billing_project.api import app_error_response, json_loads_strict
from billing_project.errors import AppError, Conflict, InvalidRequest, ServiceUnavailable

from .models import RequestIdempotency, RequestIdempotencyStatus

logger = logging.getLogger("billing.idempotency")

HEADER = "HTTP_IDEMPOTENCY_KEY"
FORM_FIELD = "idempotencyKey"
MAX_KEY_LENGTH = 255
#: Form fields that are not part of the request's meaning.
_IGNORED_FORM_FIELDS = frozenset({"csrfmiddlewaretoken", FORM_FIELD})
#: Statuses meaning "refused before anything ran": the key is freed.
_RELEASE_STATUSES = frozenset({400, 413, 422})
#: A concurrent duplicate waits this long for the first request's outcome (setting overrides).
DEFAULT_WAIT_SECONDS = 20.0
_POLL_SECONDS = 0.05
#: An in_progress claim older than this belongs to a request that died (worker killed): taken over.
STALE_AFTER = dt.timedelta(minutes=5)
#: Keys are honoured at least 30 days (then purged daily by `request_idempotency_purge`).
RETENTION = dt.timedelta(days=31)


def request_idempotency_purge(*, now: dt.datetime, batch_size: int = 5000) -> int:
    """Delete the keys older than RETENTION, in batches (short transactions). Returns how many."""
    cutoff, deleted = now - RETENTION, 0
    while True:
        ids = list(RequestIdempotency.objects.filter(created_at__lt=cutoff).order_by("pk")
                   .values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        deleted += RequestIdempotency.objects.filter(pk__in=ids).delete()[0]
    if deleted:
        logger.info("purged %s request idempotency keys older than %s", deleted, cutoff)
    return deleted


def new_form_token() -> str:
    """A fresh one-time token for a form (unguessable; scoped per org and user when used)."""
    return secrets.token_urlsafe(24)


def _is_form(request: HttpRequest) -> bool:
    return request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


def _key_from(request: HttpRequest) -> str | None:
    if HEADER in request.META:
        key = request.META[HEADER]
    elif _is_form(request) and FORM_FIELD in request.POST:
        key = request.POST[FORM_FIELD]
    else:
        return None
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"the idempotency key must be 1 to {MAX_KEY_LENGTH} characters",
                             code="INVALID_IDEMPOTENCY_KEY")
    return key


def _fingerprint(request: HttpRequest, endpoint: str) -> str:
    if _is_form(request):
        body: Any = {k: v for k, v in sorted(request.POST.lists()) if k not in _IGNORED_FORM_FIELDS}
    else:
        try:
            # A fingerprint only (hashed, never read back): floats serialise as JSON.
            body = json_loads_strict(request.body, exact_numbers=False) if request.body else None
        except ValueError:
            body = {"raw": hashlib.sha256(request.body).hexdigest()}
    query = sorted(request.GET.lists())
    canonical = json.dumps({"m": request.method, "e": endpoint, "q": query, "b": body}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _wait_seconds() -> float:
    return float(getattr(settings, "BILLING_IDEMPOTENCY_WAIT_SECONDS", DEFAULT_WAIT_SECONDS))


def _claim(*, organization_id, user_id: int, key: str, endpoint: str, fingerprint: str,
           now: dt.datetime) -> tuple[RequestIdempotency, bool]:
    """(row, True) when this request must run (it holds the claim), (completed row, False) to replay."""
    key_hash = _hash_key(key)
    deadline = time.monotonic() + _wait_seconds()
    while True:
        try:
            with transaction.atomic():  # a savepoint when a caller's transaction is open (tests)
                row = RequestIdempotency.objects.create(
                    organization_id=organization_id, user_id=user_id, key_hash=key_hash, key=key, endpoint=endpoint,
                    fingerprint=fingerprint, status=RequestIdempotencyStatus.IN_PROGRESS, created_at=now,
                    updated_at=now)
            return row, True
        except IntegrityError:
            pass  # the key is taken: look at its row
        row = RequestIdempotency.objects.filter(organization_id=organization_id, user_id=user_id,
                                                key_hash=key_hash).first()
        if row is None:
            continue  # freed (an invalid first request) between our INSERT and this read: claim it
        if row.fingerprint != fingerprint:
            raise Conflict("this idempotency key was already used for a different request",
                           code="IDEMPOTENCY_KEY_REUSED", extra={"endpoint": row.endpoint})
        if row.status == RequestIdempotencyStatus.COMPLETED:
            return row, False
        clock = timezone.now()
        if row.status == RequestIdempotencyStatus.FAILED or row.updated_at < clock - STALE_AFTER:
            # Take the row over (one winner: conditional UPDATE on the state we read).
            taken = RequestIdempotency.objects.filter(pk=row.pk, status=row.status, updated_at=row.updated_at).update(
                status=RequestIdempotencyStatus.IN_PROGRESS, updated_at=clock, attempts=F("attempts") + 1)
            if taken:
                logger.info("idempotency key %s of org %s: retry #%s of a %s request", row.pk, organization_id,
                            row.attempts + 1, row.status)
                row.refresh_from_db()
                return row, True
            continue
        if time.monotonic() > deadline:
            exc = Conflict("a request with this idempotency key is still being processed; retry shortly",
                           code="IDEMPOTENCY_REQUEST_IN_PROGRESS")
            exc.headers = {"Retry-After": "1"}
            raise exc
        time.sleep(_POLL_SECONDS)  # poll the other request's outcome (each read sees new commits)


def _queued_messages(request: HttpRequest) -> list[list[Any]]:
    storage = getattr(request, "_messages", None)
    return [[m.level, str(m.message), m.extra_tags or ""] for m in getattr(storage, "_queued_messages", [])]


def _record(row: RequestIdempotency, request: HttpRequest, response: HttpResponse) -> None:
    now = timezone.now()
    # A form post gets a redirect whatever happened: the error it carries decides (see app_error_response).
    status = getattr(request, "app_error_status", None) or response.status_code
    if status >= 500:
        RequestIdempotency.objects.filter(pk=row.pk).update(
            status=RequestIdempotencyStatus.FAILED, response_status=status, updated_at=now)
        return
    if status in _RELEASE_STATUSES:
        # Nothing ran: free the key (unless the request already created an intent that a retry must reuse).
        if not RequestIdempotency.objects.filter(pk=row.pk, credit_purchase__isnull=True).delete()[0]:
            RequestIdempotency.objects.filter(pk=row.pk).update(
                status=RequestIdempotencyStatus.FAILED, response_status=status, updated_at=now)
        return
    content = b"" if getattr(response, "streaming", False) else response.content
    RequestIdempotency.objects.filter(pk=row.pk).update(
        status=RequestIdempotencyStatus.COMPLETED, response_status=status,
        response_content_type=response.get("Content-Type", "")[:100],
        response_location=response.get("Location", "")[:2000],
        response_body=content.decode(response.charset or "utf-8", "replace"),
        response_messages=_queued_messages(request), updated_at=now, completed_at=now)


def _replay(row: RequestIdempotency, request: HttpRequest) -> HttpResponse:
    for level, text, tags in row.response_messages or []:
        messages.add_message(request, level, text, extra_tags=tags)
    response = HttpResponse(row.response_body.encode("utf-8"), status=row.response_status,
                            content_type=row.response_content_type or None)
    if row.response_location:
        response["Location"] = row.response_location
    response["Idempotent-Replayed"] = "true"
    return response


def _refused(request: HttpRequest, exc: AppError) -> HttpResponse:
    # A form posted again with an old token (e.g. changed after going Back): show the page afresh.
    org = getattr(request, "org", None)
    return app_error_response(
        request, exc, as_json=not _is_form(request),
        redirect_to=f"/settings/billing?org={org.slug}" if org is not None else "/settings/billing",
        message="This form was already submitted; here is the current state. Check it and submit again if needed.")


def idempotent_request(endpoint: str) -> Callable:
    """Make a view idempotent by key (see the module doc). Goes inside `org_view` (needs the org/user)."""

    def decorator(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, membership, *args: Any, **kwargs: Any) -> HttpResponse:
            request.idempotency = None
            try:
                key = _key_from(request)
                if key is None:
                    return view(request, membership, *args, **kwargs)
                row, run = _claim(organization_id=membership.organization_id, user_id=request.user.pk, key=key,
                                  endpoint=endpoint, fingerprint=_fingerprint(request, endpoint),
                                  now=timezone.now())
            except AppError as exc:
                if exc.code == "IDEMPOTENCY_KEY_REUSED":
                    logger.warning("org %s user %s reused an idempotency key on %s for another request",
                                   membership.organization_id, request.user.pk, endpoint)
                return _refused(request, exc)
            except DatabaseError:
                logger.exception("idempotency claim failed on %s", request.path)
                return app_error_response(request, ServiceUnavailable("database error", code="DATABASE_ERROR"),
                                          as_json=True)
            if not run:
                logger.info("idempotency key %s of org %s replayed on %s", row.pk, membership.organization_id,
                            endpoint)
                return _replay(row, request)
            request.idempotency = row
            try:
                response = view(request, membership, *args, **kwargs)
            except BaseException:
                RequestIdempotency.objects.filter(pk=row.pk).update(status=RequestIdempotencyStatus.FAILED,
                                                                    updated_at=timezone.now())
                raise
            _record(row, request, response)
            return response

        wrapper.idempotent_endpoint = endpoint  # copied onto the outer decorators by functools.wraps
        return wrapper

    return decorator
