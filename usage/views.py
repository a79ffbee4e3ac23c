"""The usage API for the orchestrator (README "Interfaces"). Thin: authenticate,
parse, one service call; billing_project.api.json_api turns AppErrors into their status + code.

Auth: `Authorization: Bearer <token>`, the token being ORCHESTRATOR_SERVICE_TOKEN (constant-time
compare; any org) or an org API key (`bk_…`; only its own org - `orgId` may then be omitted).
A key naming another org gets 404 ORG_NOT_FOUND, exactly like an org that does not exist, so a
key cannot probe which org ids exist.
"""
from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.validators import slug_re
from django.http import HttpRequest
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from billing.api_shapes import balance_summary_json
from billing.selectors import balance_summary
from billing_project.api import json_api, parse_json_body
from billing_project.errors import AppError, AuthenticationRequired, InvalidRequest, NotFound
from organizations.models import Organization
from organizations.services import TOKEN_PREFIX, api_key_authenticate

from .coalesce import action_record_coalesced
from .ratelimit import rate_limit_check
from .services import ActionInput, action_check, actions_record_batch

#: A batch of 1000 actions with keys and metadata does not fit in the default 64 KiB.
BATCH_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Caller:
    org_scope: uuid.UUID | None  # None: the orchestrator, any org


def _authenticate(request: HttpRequest) -> Caller:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationRequired("send Authorization: Bearer <token>", code="MISSING_TOKEN")
    if token.startswith(TOKEN_PREFIX):
        key = api_key_authenticate(token=token)
        if key is not None:
            rate_limit_check(token=token, orchestrator=False, now=time.time())  # 429 RATE_LIMITED
            return Caller(org_scope=key.organization_id)
    else:
        expected = settings.ORCHESTRATOR_SERVICE_TOKEN
        if expected and hmac.compare_digest(token.encode(), expected.encode()):
            rate_limit_check(token=token, orchestrator=True, now=time.time())
            return Caller(org_scope=None)
    raise AuthenticationRequired("invalid service token or API key", code="INVALID_SERVICE_TOKEN")


def _org_id(caller: Caller, raw: Any) -> uuid.UUID:
    """The org named by `orgId` (UUID or slug) that this caller may use. Existence of a UUID is
    checked by the service (which needs the row anyway); slugs are resolved here."""
    if raw is None or raw == "":
        if caller.org_scope is not None:
            return caller.org_scope
        raise InvalidRequest("orgId is required", extra={"field": "orgId"})
    if not isinstance(raw, str) or len(raw) > 80:
        raise InvalidRequest("orgId must be an organization id or slug", extra={"field": "orgId"})
    try:
        org_id = uuid.UUID(raw)
    except ValueError:
        # Not a slug (e.g. a lone surrogate or NUL): it names no org; don't send it to the database.
        org_id = (Organization.objects.filter(slug=raw).values_list("pk", flat=True).first()
                  if slug_re.fullmatch(raw) else None)
        if org_id is None:
            raise NotFound("organization not found", code="ORG_NOT_FOUND") from None
    if caller.org_scope is not None and org_id != caller.org_scope:
        raise NotFound("organization not found", code="ORG_NOT_FOUND")
    return org_id


def _method(request: HttpRequest, method: str) -> None:
    if request.method != method:
        raise AppError(f"use {method}", code="METHOD_NOT_ALLOWED", http_status=405)


def _user_id(value: Any) -> Any:
    # Orchestrators send numeric ids too; store every id as its string form.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _opaque_json(value: Any) -> Any:
    """The client's own JSON (metadata), stored as sent: its fractional numbers back from the request
    parser's Decimals to JSON floats (nothing computes with them)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _opaque_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_opaque_json(v) for v in value]
    return value


def _action_input(data: Any) -> ActionInput:
    if not isinstance(data, dict):
        raise InvalidRequest("each action must be a JSON object")
    if "actionTier" not in data:
        raise InvalidRequest("actionTier is required", code="INVALID_ACTION_TIER", extra={"field": "actionTier"})
    if data.get("userId") in (None, ""):
        raise InvalidRequest("userId is required", extra={"field": "userId"})
    return ActionInput(
        user_id=_user_id(data.get("userId")), tier=data.get("actionTier"), agent_id=data.get("agentId"),
        agent_name=data.get("agentName"), action_key=data.get("actionKey"), description=data.get("description"),
        metadata=_opaque_json(data.get("metadata")), idempotency_key=data.get("idempotencyKey"),
    ).validated()


@csrf_exempt
@json_api
def usage_record(request: HttpRequest):
    """POST {orgId, userId, actionTier, agentId?, agentName?, actionKey?, description?, metadata?,
    idempotencyKey?} -> 201 {success, actionId, creditsUsed, paidFrom, remainingCredits,
    topupRemaining, warning?}; an idempotent replay -> 200 with the first body."""
    _method(request, "POST")
    caller = _authenticate(request)
    data = parse_json_body(request)
    org_id = _org_id(caller, data.get("orgId"))
    action = _action_input(data)
    # Concurrent records of one org in this worker share one transaction (see usage.coalesce).
    result = action_record_coalesced(org_hex=org_id.hex, action=action, now=timezone.now())
    return result.body, (201 if result.created else 200)


@csrf_exempt
@json_api
def usage_record_batch(request: HttpRequest):
    """POST {orgId, actions:[…≤1000]} -> 200 {success, recorded, replayed, refused, results:[{index,
    status, …}]}; per item 201 (recorded), 200 (replay), 402 (refused) or 409 IDEMPOTENCY_KEY_REUSED (its key
    was used for another request; refused). A bad item -> 400, nothing recorded."""
    _method(request, "POST")
    caller = _authenticate(request)
    data = parse_json_body(request, max_bytes=BATCH_MAX_BODY_BYTES)
    org_id = _org_id(caller, data.get("orgId"))
    raw_actions = data.get("actions")
    if not isinstance(raw_actions, list):
        raise InvalidRequest("actions must be a list", extra={"field": "actions"})
    actions = []
    for i, item in enumerate(raw_actions):
        try:
            actions.append(_action_input(item))
        except AppError as exc:
            exc.extra = {**exc.extra, "index": i}
            raise
    result = actions_record_batch(organization_id=org_id, actions=actions, now=timezone.now())
    return {"success": True, "recorded": result.recorded, "replayed": result.replayed, "refused": result.refused,
            "results": result.items}


@csrf_exempt
@json_api
def usage_check(request: HttpRequest):
    """POST {orgId, actionTier} -> 200 {allowed, paidFrom, remainingCredits, topupRemaining, warning?}."""
    _method(request, "POST")
    caller = _authenticate(request)
    data = parse_json_body(request)
    org_id = _org_id(caller, data.get("orgId"))
    if "actionTier" not in data:
        raise InvalidRequest("actionTier is required", code="INVALID_ACTION_TIER", extra={"field": "actionTier"})
    return action_check(organization_id=org_id, tier=data.get("actionTier"), now=timezone.now())


@csrf_exempt
@json_api
def usage_summary(request: HttpRequest):
    """GET ?orgId= -> the balance summary (billing.selectors.balance_summary)."""
    _method(request, "GET")
    caller = _authenticate(request)
    org_id = _org_id(caller, request.GET.get("orgId"))
    org = Organization.objects.filter(pk=org_id).first()
    if org is None:
        raise NotFound("organization not found", code="ORG_NOT_FOUND")
    return {"success": True, **balance_summary_json(balance_summary(organization=org, now=timezone.now()))}
