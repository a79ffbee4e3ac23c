"""Top-up endpoints (session login + org membership; the money-moving ones need owner/admin).

JSON bodies (`application/json`) answer JSON; HTML form posts (dashboard) are redirected to the
Checkout page or back to the billing page with a message. One service call per view.
"""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing_project.api import app_error_response, json_api, parse_json_body
from billing_project.errors import AppError
from organizations.access import org_view

from .api_shapes import auto_topup_json, purchase_history_json, purchase_json
from .forms import AutoTopupSettingsForm, TopupForm
from .idempotency import idempotent_request
from .pages.dashboard import dashboard_context
from .selectors import auto_topup_settings
from .services import auto_topup, topup_purchases


def _is_json(request: HttpRequest) -> bool:
    return request.content_type == "application/json"


def _dashboard(request: HttpRequest) -> str:
    return f"/settings/billing?org={request.org.slug}"


def _form_error(request: HttpRequest, exc: AppError) -> HttpResponse:
    return app_error_response(request, exc, as_json=False, redirect_to=_dashboard(request))


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


def _topup(request: HttpRequest, membership, data: dict):
    form = TopupForm(data).parse()
    now = timezone.now()
    org = membership.organization
    if form["useSavedCard"]:
        keyed = getattr(request, "idempotency", None)  # a keyed retry re-drives the purchase it created
        purchase = topup_purchases.topup_saved_card_purchase(organization_id=org.pk, packs=form["packs"],
                                                             user=request.user, now=now,
                                                             request_idempotency_id=keyed.pk if keyed else None)
        status = 201 if purchase.status == "succeeded" else 402 if purchase.status == "failed" else 202
        return {"success": purchase.status == "succeeded", **purchase_json(purchase)}, status
    started = topup_purchases.topup_checkout_start(organization_id=org.pk, packs=form["packs"], user=request.user,
                                                   now=now)
    return {"success": True, "url": started["url"], "purchaseId": started["purchase"].pk}, 200


def _topup_form(request: HttpRequest, membership) -> HttpResponse:
    result = _topup(request, membership, request.POST.dict())
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
        data = request.POST.dict()
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


def _auto_topup(request: HttpRequest, membership, data: dict, *, form: bool) -> dict:
    settings = AutoTopupSettingsForm(data, json_body=not form).parse()
    balance = auto_topup.auto_topup_settings_update(
        organization_id=membership.organization_id, enabled=settings["enabled"], threshold=settings["threshold"],
        packs=settings["packs"], monthly_cap_packs=settings["monthlyCapPacks"], user=request.user,
        now=timezone.now())
    return {"success": True, "autoTopup": auto_topup_json(auto_topup_settings(balance))}


@require_GET
@org_view()
@json_api
def credits_history(request: HttpRequest, membership):
    """GET /api/billing/credits/history?orgId= -> the org's purchases, newest first."""
    return {"success": True, "purchases": [
        purchase_history_json(p) for p in topup_purchases.topup_history(organization_id=membership.organization_id)]}


@require_http_methods(["GET", "POST"])
@org_view(require_admin=True)
def topup_finish(request: HttpRequest, membership, purchase_id: int) -> HttpResponse:
    """The link in the `topup_needs_auth` email: send the admin to Checkout to pay (with 3-D Secure)
    for the purchase whose off-session charge needed authentication."""
    try:
        url = topup_purchases.topup_finish_checkout(purchase_id=purchase_id, organization_id=membership.organization_id,
                                           now=timezone.now())
    except AppError as exc:  # 404: another org's purchase does not exist for this user
        return _form_error(request, exc)
    return HttpResponseRedirect(url)
