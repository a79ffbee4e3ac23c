"""Browser JSON endpoints for subscriptions (session login + org membership; changes need owner/admin).

JSON bodies answer JSON; HTML form posts from the dashboard are redirected (to Stripe's hosted page,
or back to the billing page with a message). Thin: parse, one service call, respond.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from billing_project.api import app_error_response, json_api
from billing_project.errors import AppError
from organizations.access import org_view

from .forms import CancelForm, PlanForm, is_form_post, request_data
from .idempotency import idempotent_request
from .plans import PLANS
from .services import plan_changes
from .stripe_payloads import iso

def _plan(request: HttpRequest) -> str:
    return PlanForm(request_data(request)).parse()["planTier"]


def _dashboard(request: HttpRequest) -> str:
    return f"/settings/billing?org={request.org.slug}"


def _respond(request: HttpRequest, run, *, as_json=None, redirect_to=None, message=None) -> HttpResponse:
    """Run the service; JSON in/out for API clients (`as_json(result)`, default the result itself),
    redirect + flash message for dashboard forms (`message`: text, or a function of the result)."""
    if not is_form_post(request):
        return json_api(lambda req: as_json(run()) if as_json else run())(request)
    try:
        result = run()
    except AppError as exc:
        return app_error_response(request, exc, as_json=False, redirect_to=_dashboard(request))
    if message:
        messages.success(request, message(result) if callable(message) else message)
    return HttpResponseRedirect(redirect_to(result) if redirect_to else _dashboard(request))


def _subscription_json(sub) -> dict[str, Any]:
    """The one JSON shape of a subscription (status and every subscription change answer with it)."""
    return {
        "id": sub.stripe_subscription_id, "planTier": sub.plan_tier, "status": sub.status,
        "currentPeriodStart": iso(sub.current_period_start), "currentPeriodEnd": iso(sub.current_period_end),
        "trialEnd": iso(sub.trial_end), "cancelAtPeriodEnd": sub.cancel_at_period_end,
        "pendingPlanTier": sub.pending_plan_tier or None,
        "pendingPlanAt": iso(sub.current_period_end) if sub.pending_plan_tier else None,
        # An upgrade Stripe holds until its invoice is paid (the plan above is unchanged meanwhile).
        "pendingUpgradePlanTier": sub.pending_update_plan_tier or None,
        "pendingUpgradeExpiresAt": iso(sub.pending_update_expires_at) if sub.pending_update_plan_tier else None,
        "canceledAt": iso(sub.canceled_at), "endedAt": iso(sub.ended_at),
        "gracePeriodEndsAt": iso(sub.grace_period_ends_at),
    }


def _sub_json(sub) -> dict[str, Any]:
    return {"success": True, "subscription": _subscription_json(sub)}


def _status_json(status: plan_changes.PlanStatus) -> dict[str, Any]:
    org, sub = status.organization, status.subscription
    return {
        "success": True,
        "orgId": str(org.pk),
        "planTier": org.subscription_tier,
        "status": org.subscription_status,
        "trialEndsAt": iso(org.trial_ends_at),
        "trialUsed": org.trial_ends_at is not None,
        "hasBillingAccount": bool(org.stripe_customer_id),
        "subscription": None if sub is None else _subscription_json(sub),
    }


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-checkout")
def checkout_create(request: HttpRequest, membership) -> HttpResponse:
    def run():
        return {"success": True, **plan_changes.checkout_start(
            organization=request.org, plan_tier=_plan(request), email=request.user.email or None, now=timezone.now())}
    return _respond(request, run, redirect_to=lambda r: r["url"])


@require_POST
@org_view(require_admin=True)
def portal_create(request: HttpRequest, membership) -> HttpResponse:
    def run():
        request_data(request)  # a malformed body is refused
        return {"success": True, **plan_changes.billing_portal_open(organization=request.org, now=timezone.now())}
    return _respond(request, run, redirect_to=lambda r: r["url"])


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-upgrade")
def subscription_upgrade(request: HttpRequest, membership) -> HttpResponse:
    def run():
        sub = plan_changes.subscription_upgrade(organization=request.org, plan_tier=_plan(request), now=timezone.now())
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
        return plan_changes.subscription_downgrade(organization=request.org, plan_tier=_plan(request),
                                                   now=timezone.now())
    return _respond(request, run, as_json=_sub_json, message=_downgrade_message)


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-downgrade-cancel")
def subscription_downgrade_cancel(request: HttpRequest, membership) -> HttpResponse:
    """Keep the current plan: cancel a pending downgrade."""
    def run():
        request_data(request)  # a malformed body is refused
        return plan_changes.subscription_downgrade_cancel(organization=request.org, now=timezone.now())
    return _respond(request, run, as_json=_sub_json, message=_downgrade_message)


@require_POST
@org_view(require_admin=True)
@idempotent_request("billing-api-cancel")
def subscription_cancel(request: HttpRequest, membership) -> HttpResponse:
    def run():
        at_once = CancelForm(request_data(request)).parse()["now"]
        sub = plan_changes.subscription_cancel(organization=request.org, now=timezone.now(), at_period_end=not at_once)
        return _sub_json(sub)
    return _respond(request, run, message="Subscription canceled.")


@require_GET
@org_view()
@json_api
def subscription_status(request: HttpRequest, membership) -> dict[str, Any]:
    return _status_json(plan_changes.subscription_status(organization=request.org))
