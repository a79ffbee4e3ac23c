"""Operational health: what is stuck mid-way, the comparison of our subscriptions with Stripe, and
the daily summary emailed to staff.

`manage.py reconcile --stripe` (usage's command) prints `stripe_compare`; the daily summary task
builds and sends a `HealthSummary`. Billing cannot import usage, so the balance drift count is
computed by the caller (usage's reconcile) and passed in.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Q, QuerySet

from .. import stripe_gateway
from ..errors import BillingError
from ..models import (
    ENDED_SUBSCRIPTION_STATUSES,
    CheckoutIntent,
    CheckoutIntentStatus,
    CreditPurchase,
    PurchaseStatus,
    Subscription,
    WebhookEvent,
    WebhookEventStatus,
)
from ..stripe_payloads import iso, stripe_ts
from .subscription_sync import plan_tier_for_price

logger = logging.getLogger("billing.health")

#: A purchase still pending/started after this long is stuck (Stripe answers in seconds; the
#: top-up sweeper re-queues pending rows well before this).
STUCK_PURCHASE_AFTER = dt.timedelta(minutes=30)
#: Authentication that never came: the customer had a day to complete it.
STUCK_REQUIRES_ACTION_AFTER = dt.timedelta(hours=24)
#: A webhook event still pending after this long was not processed (Celery retries take minutes).
STUCK_WEBHOOK_AFTER = dt.timedelta(minutes=15)
FAILED_WEBHOOK_WINDOW = dt.timedelta(days=7)
#: A checkout intent marked STARTED this long ago with no session recorded stopped mid-way.
STUCK_CHECKOUT_AFTER = dt.timedelta(minutes=30)


def purchases_stuck(*, now: dt.datetime) -> QuerySet[CreditPurchase]:
    """Purchases that stopped mid-way: pending/started too long, requires_action for a day,
    flagged by the sweeper, or succeeded without their credits applied (must never happen)."""
    cutoff = now - STUCK_PURCHASE_AFTER
    return CreditPurchase.objects.filter(
        Q(status=PurchaseStatus.PENDING, created_at__lt=cutoff)
        | Q(status=PurchaseStatus.STARTED, created_at__lt=cutoff)
        | Q(status=PurchaseStatus.REQUIRES_ACTION, created_at__lt=now - STUCK_REQUIRES_ACTION_AFTER)
        | Q(status=PurchaseStatus.SUCCEEDED, credits_applied_at__isnull=True)
        | Q(flagged_at__isnull=False, status__in=[PurchaseStatus.PENDING, PurchaseStatus.STARTED])
    ).select_related("organization").order_by("created_at")


def checkout_intents_stuck(*, now: dt.datetime) -> QuerySet[CheckoutIntent]:
    """Checkout intents left STARTED without a recorded session (we stopped between marking the row
    and recording Stripe's answer). Surfaced for ops, never retried blindly; the session, if Stripe
    created one, carries `checkoutIntentId` metadata and its completion webhook still closes the row."""
    return CheckoutIntent.objects.filter(
        status=CheckoutIntentStatus.STARTED, stripe_checkout_session_id__isnull=True,
        created_at__lt=now - STUCK_CHECKOUT_AFTER,
    ).select_related("organization").order_by("created_at")


def checkout_intent_row(i: CheckoutIntent, *, now: dt.datetime) -> dict[str, Any]:
    return {"id": i.pk, "org": i.organization.slug, "planTier": i.plan_tier, "status": i.status,
            "createdAt": i.created_at.isoformat(), "ageMinutes": int((now - i.created_at).total_seconds() // 60),
            "idempotencyKey": f"checkout:{i.pk}"}


def webhook_events_failed(*, now: dt.datetime, window: dt.timedelta = FAILED_WEBHOOK_WINDOW
                          ) -> QuerySet[WebhookEvent]:
    return WebhookEvent.objects.filter(status=WebhookEventStatus.FAILED,
                                       received_at__gte=now - window).order_by("received_at")


def webhook_events_stuck(*, now: dt.datetime) -> QuerySet[WebhookEvent]:
    """Events received but still pending after STUCK_WEBHOOK_AFTER (never processed)."""
    return WebhookEvent.objects.filter(status=WebhookEventStatus.PENDING,
                                       received_at__lt=now - STUCK_WEBHOOK_AFTER).order_by("received_at")


def purchase_row(p: CreditPurchase, *, now: dt.datetime) -> dict[str, Any]:
    return {"id": p.pk, "org": p.organization.slug, "kind": p.kind, "status": p.status, "credits": str(p.credits),
            "createdAt": p.created_at.isoformat(), "ageMinutes": int((now - p.created_at).total_seconds() // 60),
            "stripePaymentIntentId": p.stripe_payment_intent_id or "",
            "creditsApplied": p.credits_applied_at is not None}


def webhook_row(e: WebhookEvent, *, now: dt.datetime) -> dict[str, Any]:
    return {"id": e.pk, "stripeEventId": e.stripe_event_id, "type": e.type, "status": e.status,
            "receivedAt": e.received_at.isoformat(),
            "ageMinutes": int((now - e.received_at).total_seconds() // 60),
            "retryCount": e.retry_count, "error": e.error[:200]}


@dataclass
class HealthSummary:
    generated_at: dt.datetime
    failed_webhooks: list[dict[str, Any]] = field(default_factory=list)   # last 7 days
    stuck_webhooks: list[dict[str, Any]] = field(default_factory=list)
    stuck_purchases: list[dict[str, Any]] = field(default_factory=list)
    stuck_checkouts: list[dict[str, Any]] = field(default_factory=list)   # CheckoutIntent left STARTED
    drifted_orgs: int = 0
    drift_fields: int = 0
    drift_orgs: list[str] = field(default_factory=list)                   # slugs (first few)

    @property
    def healthy(self) -> bool:
        return not (self.failed_webhooks or self.stuck_webhooks or self.stuck_purchases or self.stuck_checkouts
                    or self.drifted_orgs)

    def subject(self) -> str:
        state = "OK" if self.healthy else "ATTENTION"
        return (f"[billing] daily health {self.generated_at:%Y-%m-%d}: {state} — "
                f"{len(self.failed_webhooks)} failed webhooks (7d), {len(self.stuck_purchases)} stuck purchases, "
                f"{self.drifted_orgs} drifted balances")

    def body(self) -> str:
        lines = [self.subject(), "",
                 f"Failed webhook events in the last 7 days: {len(self.failed_webhooks)}"]
        lines += [f"  {w['stripeEventId']} {w['type']} retries={w['retryCount']} {w['error']}"
                  for w in self.failed_webhooks[:50]]
        lines += ["", f"Webhook events pending too long: {len(self.stuck_webhooks)}"]
        lines += [f"  {w['stripeEventId']} {w['type']} {w['ageMinutes']} min" for w in self.stuck_webhooks[:50]]
        lines += ["", f"Stuck credit purchases: {len(self.stuck_purchases)}"]
        lines += [f"  #{p['id']} {p['org']} {p['kind']} {p['status']} {p['credits']} credits {p['ageMinutes']} min"
                  f"{'' if p['creditsApplied'] or p['status'] != 'succeeded' else ' (credits NOT applied)'}"
                  for p in self.stuck_purchases[:50]]
        lines += ["", f"Checkout intents stuck mid-way (STARTED, no session recorded): {len(self.stuck_checkouts)}"]
        lines += [f"  #{c['id']} {c['org']} {c['planTier']} {c['ageMinutes']} min key={c['idempotencyKey']}"
                  for c in self.stuck_checkouts[:50]]
        lines += ["", f"Balances drifted from their facts: {self.drifted_orgs} orgs, {self.drift_fields} fields"]
        lines += [f"  {slug}" for slug in self.drift_orgs[:50]]
        if self.drifted_orgs:
            lines += ["  Fix: manage.py reconcile --fix (or 'Recompute balance' in the admin)."]
        lines += ["", f"Admin: {settings.APP_BASE_URL.rstrip('/')}/admin/"]
        return "\n".join(lines) + "\n"


def health_summary_build(*, now: dt.datetime, drifted_orgs: int = 0, drift_fields: int = 0,
                         drift_orgs: list[str] | None = None) -> HealthSummary:
    return HealthSummary(
        generated_at=now,
        failed_webhooks=[webhook_row(e, now=now) for e in webhook_events_failed(now=now)[:500]],
        stuck_webhooks=[webhook_row(e, now=now) for e in webhook_events_stuck(now=now)[:500]],
        stuck_purchases=[purchase_row(p, now=now) for p in purchases_stuck(now=now)[:500]],
        stuck_checkouts=[checkout_intent_row(i, now=now) for i in checkout_intents_stuck(now=now)[:500]],
        drifted_orgs=drifted_orgs, drift_fields=drift_fields, drift_orgs=list(drift_orgs or []),
    )


def health_summary_send(*, summary: HealthSummary) -> int:
    """Email the summary to settings.BILLING_ADMIN_EMAIL (comma-separated allowed). Returns the
    number of messages sent (0 when no address is configured: logged, not an error)."""
    recipients = [a.strip() for a in (settings.BILLING_ADMIN_EMAIL or "").split(",") if a.strip()]
    if not recipients:
        logger.warning("BILLING_ADMIN_EMAIL is empty; daily health summary not emailed: %s", summary.subject())
        return 0
    sent = send_mail(subject=summary.subject(), message=summary.body(), from_email=settings.DEFAULT_FROM_EMAIL,
                     recipient_list=recipients)
    logger.info("daily health summary sent to %s: %s", ",".join(recipients), summary.subject())
    return sent


def report_value(value: Any) -> Any:
    """A value as a report shows it: decimals as plain strings, datetimes as ISO 8601 (UTC)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return iso(value)
    return value


# --- Stripe and stuck work (--stripe) -----------------------------------------------------------

@dataclass
class StripeReport:
    checked_subscriptions: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    stuck_purchases: list[dict[str, Any]] = field(default_factory=list)
    failed_webhooks: list[dict[str, Any]] = field(default_factory=list)
    stuck_webhooks: list[dict[str, Any]] = field(default_factory=list)
    stuck_checkouts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (len(self.mismatches) + len(self.errors) + len(self.stuck_purchases) + len(self.failed_webhooks)
                + len(self.stuck_webhooks) + len(self.stuck_checkouts))

    def as_dict(self) -> dict[str, Any]:
        return {"checkedSubscriptions": self.checked_subscriptions, "mismatches": self.mismatches,
                "errors": self.errors, "stuckPurchases": self.stuck_purchases,
                "failedWebhooks": self.failed_webhooks, "stuckWebhooks": self.stuck_webhooks,
                "stuckCheckouts": self.stuck_checkouts}


def _stripe_view(obj: dict) -> dict[str, Any]:
    """The fields we mirror, read from a Stripe subscription object (period on the item since
    API 2025-03-31, at the top level before)."""
    items = ((obj.get("items") or {}).get("data") or [{}])
    item = items[0] if items else {}
    price = item.get("price") or {}
    period_end = item.get("current_period_end") or obj.get("current_period_end")
    return {"status": obj.get("status"), "plan_tier": plan_tier_for_price(price=price),
            "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
            "current_period_end": stripe_ts(period_end)}


def stripe_compare(*, now: dt.datetime, org_slug: str | None = None) -> StripeReport:
    """Compare every not-ended local subscription with Stripe (one gateway read each, no DB
    transaction open), check the org mirrors its live subscription, and list purchases and
    webhook events stuck mid-way."""
    report = StripeReport()
    subs = (Subscription.objects.exclude(status__in=list(ENDED_SUBSCRIPTION_STATUSES))
            .select_related("organization").order_by("pk"))
    if org_slug is not None:
        subs = subs.filter(organization__slug=org_slug)
    for sub in subs.iterator(chunk_size=200):
        report.checked_subscriptions += 1
        base = {"org": sub.organization.slug, "subscription": sub.stripe_subscription_id}
        if sub.is_live and (sub.organization.subscription_tier != sub.plan_tier
                            or sub.organization.subscription_status != sub.status):
            report.mismatches.append({**base, "field": "organization",
                                      "local": f"{sub.organization.subscription_tier}/{sub.organization.subscription_status}",
                                      "stripe": f"{sub.plan_tier}/{sub.status}"})
        try:
            remote = _stripe_view(stripe_gateway.subscription_retrieve(subscription_id=sub.stripe_subscription_id).obj)
        except BillingError as exc:
            report.errors.append({**base, "error": exc.code, "message": exc.message})
            continue
        # A deferred downgrade: Stripe already bills the pending (lower) plan's price.
        local = {"status": sub.status, "plan_tier": sub.pending_plan_tier or sub.plan_tier, "cancel_at_period_end": sub.cancel_at_period_end,
                 "current_period_end": sub.current_period_end}
        for name, value in local.items():
            if remote[name] is not None and remote[name] != value:
                report.mismatches.append({**base, "field": name, "local": report_value(value),
                                          "stripe": report_value(remote[name])})
    purchases = purchases_stuck(now=now)
    failed = webhook_events_failed(now=now)
    if org_slug is not None:
        purchases = purchases.filter(organization__slug=org_slug)
    report.stuck_purchases = [purchase_row(p, now=now) for p in purchases[:1000]]
    checkouts = checkout_intents_stuck(now=now)
    if org_slug is not None:
        checkouts = checkouts.filter(organization__slug=org_slug)
    report.stuck_checkouts = [checkout_intent_row(i, now=now) for i in checkouts[:1000]]
    if org_slug is None:  # events carry no org column; listed only for a whole-database run
        report.failed_webhooks = [webhook_row(e, now=now) for e in failed[:1000]]
        report.stuck_webhooks = [webhook_row(e, now=now) for e in webhook_events_stuck(now=now)[:1000]]
    return report
