"""Browser JSON endpoints for subscriptions (session login + org membership; changes need owner/admin).

JSON bodies answer JSON; HTML form posts from the dashboard are redirected (to Stripe's hosted page,
or back to the billing page with a message). Thin: parse, one service call, respond.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from billing_project.api import error_response, json_api, parse_json_body
from billing_project.errors import AppError, InvalidRequest
from organizations.access import org_view

from .idempotency import idempotent_request
from .plans import PLANS
from .services import plan_changes

_TRUE = {"1", "true", "on", "yes"}


def _is_form(request: HttpRequest) -> bool:
    return request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


def _body(request: HttpRequest) -> dict[str, Any]:
    if _is_form(request):
        return request.POST.dict()
    if not request.body:
        return {}
    return parse_json_body(request)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in _TRUE


def _plan(body: dict[str, Any]) -> str:
    tier = body.get("planTier") or body.get("plan") or body.get("tier")
    if not isinstance(tier, str) or not tier:
        raise InvalidRequest("planTier is required (starter, pro or max)", code="INVALID_PLAN")
    return tier.strip().lower()


def _dashboard(request: HttpRequest) -> str:
    return f"/settings/billing?org={request.org.slug}"


def _respond(request: HttpRequest, run, *, as_json=None, redirect_to=None, message=None) -> HttpResponse:
    """Run the service; JSON in/out for API clients (`as_json(result)`, default the result itself),
    redirect + flash message for dashboard forms (`message`: text, or a function of the result)."""
    if not _is_form(request):
        return json_api(lambda req: as_json(run()) if as_json else run())(request)
    try:
        result = run()
    except AppError as exc:
        messages.error(request, exc.message)
        finish_url = exc.extra.get("hostedInvoiceUrl")
        if exc.code == "AUTHENTICATION_REQUIRED" and finish_url:
            return HttpResponseRedirect(finish_url)  # 3-D Secure: the holder finishes on Stripe's invoice page
        return HttpResponseRedirect(_dashboard(request))
    if message:
        messages.success(request, message(result) if callable(message) else message)
    return HttpResponseRedirect(redirect_to(result) if redirect_to else _dashboard(request))


def _sub_json(sub) -> dict[str, Any]:
    return {"success": True, "subscription": {
        "id": sub.stripe_subscription_id, "planTier": sub.plan_tier, "status": sub.status,
        "cancelAtPeriodEnd": sub.cancel_at_period_end,
        "pendingPlanTier": sub.pending_plan_tier or None,
        "pendingPlanAt": sub.current_period_end.isoformat() if sub.pending_plan_tier and sub.current_period_end
        else None,
        "currentPeriodEnd": sub.current_period_end.isoformat() if sub.current_period_end else None,
        "endedAt": sub.ended_at.isoformat() if sub.ended_at else None}}


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-checkout")
def checkout_create(request: HttpRequest, membership) -> HttpResponse:
    def run():
        body = _body(request)
        return {"success": True, **plan_changes.checkout_start(
            organization=request.org, plan_tier=_plan(body), email=request.user.email or None, now=timezone.now())}
    return _respond(request, run, redirect_to=lambda r: r["url"])


@require_POST
@org_view(require_admin=True)
def portal_create(request: HttpRequest, membership) -> HttpResponse:
    def run():
        _body(request)
        return {"success": True, **plan_changes.billing_portal_open(organization=request.org, now=timezone.now())}
    return _respond(request, run, redirect_to=lambda r: r["url"])


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-upgrade")
def subscription_upgrade(request: HttpRequest, membership) -> HttpResponse:
    def run():
        body = _body(request)
        sub = plan_changes.subscription_upgrade(organization=request.org, plan_tier=_plan(body), now=timezone.now())
        return _sub_json(sub)
    return _respond(request, run, message="Plan upgraded.")


def _downgrade_message(sub) -> str:
    if sub.pending_plan_tier and sub.current_period_end:
        return (f"Your plan changes to {PLANS[sub.pending_plan_tier].name} on "
                f"{sub.current_period_end:%b %-d, %Y}; {PLANS[sub.plan_tier].name} allowances stay until then.")
    return f"You stay on {PLANS[sub.plan_tier].name}."


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-downgrade")
def subscription_downgrade(request: HttpRequest, membership) -> HttpResponse:
    """Schedule a lower plan for the period end (`plan` = the current plan: keep it)."""
    def run():
        return plan_changes.subscription_downgrade(organization=request.org, plan_tier=_plan(_body(request)),
                                               now=timezone.now())
    return _respond(request, run, as_json=_sub_json, message=_downgrade_message)


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-downgrade-cancel")
def subscription_downgrade_cancel(request: HttpRequest, membership) -> HttpResponse:
    """Keep the current plan: cancel a pending downgrade."""
    def run():
        _body(request)
        return plan_changes.subscription_downgrade_cancel(organization=request.org, now=timezone.now())
    return _respond(request, run, as_json=_sub_json, message=_downgrade_message)


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-cancel")
def subscription_cancel(request: HttpRequest, membership) -> HttpResponse:
    def run():
        body = _body(request)
        sub = plan_changes.subscription_cancel(organization=request.org, now=timezone.now(),
                                           at_period_end=not _flag(body.get("now")))
        return _sub_json(sub)
    return _respond(request, run, message="Subscription canceled.")


@require_GET
@org_view()
def subscription_status(request: HttpRequest, membership) -> JsonResponse:
    try:
        return JsonResponse({"success": True, **plan_changes.subscription_status(organization=request.org)})
    except AppError as exc:
        return error_response(exc)
