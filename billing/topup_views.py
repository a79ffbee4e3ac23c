"""Top-up endpoints (session login + org membership; the money-moving ones need owner/admin).

JSON bodies (`application/json`) answer JSON; HTML form posts (dashboard) are redirected to the
Checkout page or back to the billing page with a message. One service call per view.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing_project.api import json_api, parse_json_body
from billing_project.errors import AppError, InvalidRequest
from organizations.access import org_view

from .idempotency import idempotent_request
from .page_context import dashboard_context
from .services import topups

_TRUE = {"1", "true", "on", "yes"}


def _is_json(request: HttpRequest) -> bool:
    return request.content_type == "application/json"


def _body(request: HttpRequest) -> dict[str, Any]:
    if _is_json(request):
        return parse_json_body(request)
    return {k: v for k, v in request.POST.items()}


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return None


def _dashboard(request: HttpRequest) -> str:
    return f"/settings/billing?org={request.org.slug}"


def _form_error(request: HttpRequest, exc: AppError) -> HttpResponse:
    messages.error(request, exc.message)
    return HttpResponseRedirect(_dashboard(request))


def _purchase_json(purchase) -> dict[str, Any]:
    return {"purchaseId": purchase.pk, "status": purchase.status, "packs": purchase.packs,
            "credits": str(purchase.credits), "amountCents": purchase.amount_cents,
            "failureCode": purchase.failure_code or None, "failureMessage": purchase.failure_message or None,
            "finishUrl": topups.topup_finish_url(purchase=purchase) if purchase.status == "requires_action" else None}


@require_POST
@org_view(require_admin=True)
@idempotent_request("credits-topup")
def credits_topup(request: HttpRequest, membership) -> HttpResponse:
    """POST /api/billing/credits/topup {orgId, packs, useSavedCard?} -> {url} (Checkout) or the
    outcome of the saved-card charge."""
    if not _is_json(request):
        try:
            return _topup_form(request, membership)
        except AppError as exc:
            return _form_error(request, exc)
    return _topup_json(request, membership)


@json_api
def _topup_json(request: HttpRequest, membership):
    data = parse_json_body(request)
    return _topup(request, membership, data)


def _topup(request: HttpRequest, membership, data: dict[str, Any]):
    now = timezone.now()
    org = membership.organization
    if _flag(data.get("useSavedCard")):
        keyed = getattr(request, "idempotency", None)  # a keyed retry re-drives the purchase it created
        purchase = topups.topup_saved_card_purchase(organization_id=org.pk, packs=data.get("packs"),
                                                    user=request.user, now=now,
                                                    request_idempotency_id=keyed.pk if keyed else None)
        status = 201 if purchase.status == "succeeded" else 402 if purchase.status == "failed" else 202
        return {"success": purchase.status == "succeeded", **_purchase_json(purchase)}, status
    started = topups.topup_checkout_start(organization_id=org.pk, packs=data.get("packs"), user=request.user, now=now)
    return {"success": True, "url": started["url"], "purchaseId": started["purchase"].pk}, 200


def _topup_form(request: HttpRequest, membership) -> HttpResponse:
    result = _topup(request, membership, _body(request))
    body, _status = result
    if body.get("url"):
        return HttpResponseRedirect(body["url"])
    if body["status"] == "succeeded":
        messages.success(request, f"{body['credits']} credits added.")
    elif body["status"] == "requires_action":
        return HttpResponseRedirect(body["finishUrl"])
    else:
        messages.error(request, body.get("failureMessage") or "The payment failed.")
    return HttpResponseRedirect(_dashboard(request))


@require_POST
@org_view(require_admin=True)
@idempotent_request("credits-auto-topup")
def credits_auto_topup(request: HttpRequest, membership) -> HttpResponse:
    """POST /api/billing/credits/auto-topup {orgId, enabled, threshold, packs, monthlyCapPacks}."""
    if not _is_json(request):
        data = _body(request)
        try:
            _auto_topup(request, membership, data, form=True)
        except AppError as exc:
            # Rendered, not redirected: the form comes back as typed, the refusal next to its field.
            context = dashboard_context(membership=membership, now=timezone.now(), auto_topup_submitted=data,
                                        auto_topup_error=exc)
            return render(request, "billing/dashboard.html", context, status=exc.http_status)
        messages.success(request, "Auto top-up settings saved.")
        return HttpResponseRedirect(_dashboard(request))
    return _auto_topup_json(request, membership)


@json_api
def _auto_topup_json(request: HttpRequest, membership):
    return _auto_topup(request, membership, parse_json_body(request), form=False)


def _auto_topup(request: HttpRequest, membership, data: dict[str, Any], *, form: bool) -> dict[str, Any]:
    if form:
        enabled = bool(_flag(data.get("enabled")))  # an unchecked checkbox is absent from the form
    else:
        enabled = data.get("enabled")
        if not isinstance(enabled, bool):
            raise InvalidRequest("enabled must be true or false", extra={"field": "enabled"})
    balance = topups.auto_topup_settings_update(
        organization_id=membership.organization_id, enabled=enabled, threshold=data.get("threshold"),
        packs=data.get("packs"), monthly_cap_packs=data.get("monthlyCapPacks", data.get("monthly_cap_packs")),
        user=request.user, now=timezone.now())
    return {"success": True, "autoTopup": {
        "enabled": balance.auto_topup_enabled, "threshold": str(balance.auto_topup_threshold),
        "packs": balance.auto_topup_packs, "monthlyCapPacks": balance.auto_topup_monthly_cap_packs}}


@require_GET
@org_view()
@json_api
def credits_history(request: HttpRequest, membership):
    """GET /api/billing/credits/history?orgId= -> the org's purchases, newest first."""
    return {"success": True, "purchases": topups.topup_history(organization_id=membership.organization_id)}


@require_http_methods(["GET", "POST"])
@org_view(require_admin=True)
def topup_finish(request: HttpRequest, membership, purchase_id: int) -> HttpResponse:
    """The link in the `topup_needs_auth` email: send the admin to Checkout to pay (with 3-D Secure)
    for the purchase whose off-session charge needed authentication."""
    try:
        url = topups.topup_finish_checkout(purchase_id=purchase_id, organization_id=membership.organization_id,
                                           now=timezone.now())
    except AppError as exc:
        if exc.http_status == 404:  # another org's purchase does not exist for this user
            raise Http404(exc.message) from None
        return _form_error(request, exc)
    return HttpResponseRedirect(url)
