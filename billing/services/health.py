"""Operational health: what is stuck mid-way, and the daily summary emailed to staff.

Selectors here are shared by `manage.py reconcile --stripe` (usage) and the daily summary task.
Billing cannot import usage, so the balance drift count is computed by the caller (usage's
reconcile) and passed in.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Q, QuerySet

from ..models import CheckoutIntent, CheckoutIntentStatus, CreditPurchase, PurchaseStatus, WebhookEvent, WebhookEventStatus

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
