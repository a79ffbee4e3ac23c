"""Dunning: a failed subscription invoice starts a grace period; payment in time ends it; after it the
Stripe subscription is cancelled and the org goes to free.

- `dunning_invoice_payment_failed` (invoice.payment_failed): org and subscription past_due,
  grace_period_ends_at = now + BILLING_GRACE_PERIOD_DAYS (kept on later failures of the same
  period, not extended), email `payment_failed` with the amount and the hosted invoice link.
- `dunning_invoice_paid` (invoice.paid / payment_succeeded): grace cleared, back to active.
- `dunning_enforce` (Celery beat, see CELERY_BEAT_SCHEDULE): reminders (`grace_ending`), then for
  each subscription whose grace is over: cancel it in Stripe (outside any transaction, idempotency
  key from the row) and sync the answer (-> free, `downgraded_free` email). Also a safety net for
  trials that ended without a card while we missed the webhook, and for paid periods that ended
  without the renewal reaching us (re-read from Stripe, applied like the webhook). Idempotent: a cancelled
  subscription is no longer live, so a second run finds nothing to do.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from organizations.models import Organization, SubscriptionStatus

from .. import stripe_gateway
from ..errors import BillingError
from ..logging import log_money
from ..models.invoices import Invoice, InvoiceStatus, InvoiceType
from ..models.subscriptions import LIVE_SUBSCRIPTION_STATUSES, StripeSubscriptionStatus, Subscription
from ..notifications import notify_org_admins
from ..plans import PLANS, format_cents
from ..stripe_payloads import iso
from .subscription_sync import _lock_balance, subscription_sync

logger = logging.getLogger("billing.dunning")

#: Send the `grace_ending` reminder when this little of the grace period is left.
GRACE_REMINDER_BEFORE = dt.timedelta(days=2)
#: A trial still "trialing" this long after its end means we missed Stripe's update: re-read it.
TRIAL_END_SLACK = dt.timedelta(hours=1)
#: A live paid subscription this long past its period end means the renewal's webhook has not
#: reached us (endpoint down, Stripe retrying): re-read it, or the org keeps spending last period's
#: allowance (and may be refused) although it has paid for the new one.
RENEWAL_SLACK = dt.timedelta(hours=1)


def _grace_days() -> int:
    return int(getattr(settings, "BILLING_GRACE_PERIOD_DAYS", 7))


def _locked(invoice_id: int) -> tuple[Organization, Subscription | None, Invoice]:
    """Lock organization -> balance -> subscription -> invoice (the fixed order). Call inside atomic()."""
    invoice = Invoice.objects.get(pk=invoice_id)
    org = Organization.objects.select_for_update().get(pk=invoice.organization_id)
    _lock_balance(org.pk)
    sub = (Subscription.objects.select_for_update().filter(pk=invoice.subscription_id).first()
           if invoice.subscription_id else None)
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    return org, sub, invoice


def dunning_invoice_payment_failed(*, invoice_id: int, event_created: int, now: dt.datetime) -> bool:
    """Start (or keep) the grace period for a failed subscription invoice. Returns True if a grace
    period started now. A failure older than newer paid state changes nothing."""
    with transaction.atomic():
        org, sub, invoice = _locked(invoice_id)
        if invoice.type != InvoiceType.SUBSCRIPTION or sub is None:
            logger.info("payment failure of %s: not a known subscription invoice", invoice.stripe_invoice_id)
            return False
        if invoice.status in (InvoiceStatus.PAID, InvoiceStatus.VOID):
            return False  # already settled (a stale failure event)
        if invoice.billing_reason == "subscription_update":
            # A plan change's proration invoice (the upgrade is a pending update): unpaid, Stripe
            # discards the change and the plan paid for stays; nothing is overdue.
            logger.info("payment failure of %s: upgrade invoice, the upgrade stays pending", invoice.stripe_invoice_id)
            return False
        if sub.status not in LIVE_SUBSCRIPTION_STATUSES:
            return False  # ended/unpaid: nothing to dun; the sync put the org on free
        if sub.status == StripeSubscriptionStatus.ACTIVE and sub.last_event_created > event_created \
                and sub.grace_period_ends_at is None:
            return False  # Stripe told us later that it is active again
        started = sub.grace_period_ends_at is None
        if started:
            sub.grace_period_ends_at = now + dt.timedelta(days=_grace_days())
            sub.grace_ending_notified_at = None
        sub.status = StripeSubscriptionStatus.PAST_DUE
        sub.dunning_event_created = max(sub.dunning_event_created, int(event_created))
        sub.updated_at = now
        sub.save(update_fields=["grace_period_ends_at", "grace_ending_notified_at", "status",
                                "dunning_event_created", "updated_at"])
        if org.subscription_status != SubscriptionStatus.PAST_DUE:
            org.subscription_status = SubscriptionStatus.PAST_DUE
            org.save(update_fields=["subscription_status"])
        if started:
            notify_org_admins(organization_id=org.pk, kind="payment_failed", context={
                "amount": format_cents(invoice.amount_due_cents, invoice.currency),
                "amount_due_cents": invoice.amount_due_cents,
                "invoice_url": invoice.hosted_invoice_url,
                "fix_url": invoice.hosted_invoice_url or f"{settings.APP_BASE_URL}/settings/billing",
                "grace_period_ends_at": iso(sub.grace_period_ends_at),
                "plan": PLANS[sub.plan_tier].name,
            })
            log_money("dunning.grace_started", org=org.pk, subscription=sub.stripe_subscription_id,
                      invoice=invoice.stripe_invoice_id, amount_due_cents=invoice.amount_due_cents,
                      grace_ends=sub.grace_period_ends_at)
    return started


def dunning_invoice_paid(*, invoice_id: int, event_created: int, now: dt.datetime) -> bool:
    """A subscription invoice got paid: end the grace period, back to active. Returns True if a
    grace period (or past_due state) was cleared."""
    with transaction.atomic():
        org, sub, invoice = _locked(invoice_id)
        if invoice.type != InvoiceType.SUBSCRIPTION or sub is None or invoice.status != InvoiceStatus.PAID:
            return False
        if sub.status not in LIVE_SUBSCRIPTION_STATUSES:
            return False  # too late: already cancelled and downgraded
        if sub.grace_period_ends_at is None and sub.status != StripeSubscriptionStatus.PAST_DUE:
            return False
        still_open = Invoice.objects.filter(subscription=sub, status=InvoiceStatus.OPEN).exclude(pk=invoice.pk) \
            .values_list("stripe_invoice_id", flat=True).first()
        if still_open:
            # e.g. last month's invoice.paid delivered late, after this month's failure: the failed
            # invoice is still unpaid, so the grace period goes on.
            logger.info("payment of %s leaves %s open: grace of %s kept", invoice.stripe_invoice_id, still_open,
                        sub.stripe_subscription_id)
            return False
        sub.grace_period_ends_at = None
        sub.grace_ending_notified_at = None
        if sub.status == StripeSubscriptionStatus.PAST_DUE:
            sub.status = StripeSubscriptionStatus.ACTIVE
        sub.dunning_event_created = max(sub.dunning_event_created, int(event_created))
        sub.updated_at = now
        sub.save(update_fields=["grace_period_ends_at", "grace_ending_notified_at", "status",
                                "dunning_event_created", "updated_at"])
        if org.subscription_status == SubscriptionStatus.PAST_DUE:
            org.subscription_status = sub.status
            org.save(update_fields=["subscription_status"])
        log_money("dunning.grace_cleared", org=org.pk, subscription=sub.stripe_subscription_id,
                  invoice=invoice.stripe_invoice_id, amount_paid_cents=invoice.amount_paid_cents)
    return True


@dataclass
class DunningResult:
    reminded: list[str] = field(default_factory=list)        # stripe subscription ids
    canceled: list[str] = field(default_factory=list)
    trials_resolved: list[str] = field(default_factory=list)
    renewals_resynced: list[str] = field(default_factory=list)  # period ended, renewal webhook missed
    recovered: list[str] = field(default_factory=list)      # paid at Stripe, webhook missed: not cancelled
    errors: list[str] = field(default_factory=list)


def _send_grace_reminders(*, now: dt.datetime, result: DunningResult) -> None:
    due = Subscription.objects.filter(status__in=list(LIVE_SUBSCRIPTION_STATUSES), grace_period_ends_at__gt=now,
                                      grace_period_ends_at__lte=now + GRACE_REMINDER_BEFORE,
                                      grace_ending_notified_at__isnull=True).values_list("pk", flat=True)
    for pk in list(due):
        with transaction.atomic():
            sub = Subscription.objects.select_for_update().get(pk=pk)
            if sub.grace_ending_notified_at is not None or sub.grace_period_ends_at is None:
                continue
            sub.grace_ending_notified_at = now
            sub.save(update_fields=["grace_ending_notified_at"])
            unpaid = (Invoice.objects.filter(subscription=sub, status=InvoiceStatus.OPEN)
                      .order_by("-created_at").first())
            notify_org_admins(organization_id=sub.organization_id, kind="grace_ending", context={
                "grace_period_ends_at": iso(sub.grace_period_ends_at), "plan": PLANS[sub.plan_tier].name,
                "hosted_invoice_url": unpaid.hosted_invoice_url if unpaid else "",
                "amount_cents": unpaid.amount_due_cents if unpaid else None,
                "amount": format_cents(unpaid.amount_due_cents, unpaid.currency) if unpaid else "",
            })
            result.reminded.append(sub.stripe_subscription_id)


def _cancel_and_sync(*, sub: Subscription, idempotency_key: str, now: dt.datetime) -> Subscription:
    """Cancel in Stripe (no transaction open), then apply Stripe's answer. If Stripe says it is
    already gone, re-read it and apply that."""
    _no_transaction()
    try:
        snap = stripe_gateway.subscription_cancel(subscription_id=sub.stripe_subscription_id,
                                                  idempotency_key=idempotency_key)
    except BillingError as exc:
        logger.warning("cancel of %s failed (%s); re-reading it", sub.stripe_subscription_id, exc.code)
        snap = stripe_gateway.subscription_retrieve(subscription_id=sub.stripe_subscription_id)
        if snap.obj.get("status") in LIVE_SUBSCRIPTION_STATUSES:
            raise
    return subscription_sync(stripe_subscription=snap, now=now)


def _paid_up_at_stripe(*, sub: Subscription, now: dt.datetime) -> Subscription | None:
    """Before cancelling at the end of the grace period, ask Stripe (no transaction open): if the
    subscription is active again, the invoice got paid and its webhook has not reached us (lost, or
    FAILED awaiting reprocessing). Apply Stripe's state (clears the grace) and return the row;
    None = still unpaid, go on with the cancel."""
    _no_transaction()
    snap = stripe_gateway.subscription_retrieve(subscription_id=sub.stripe_subscription_id)
    if snap.obj.get("status") not in (StripeSubscriptionStatus.ACTIVE, StripeSubscriptionStatus.TRIALING):
        return None
    synced = subscription_sync(stripe_subscription=snap, now=now)
    log_money("dunning.recovered", org=sub.organization_id, subscription=sub.stripe_subscription_id,
              status=synced.status)
    return synced


def dunning_enforce(*, now: dt.datetime) -> DunningResult:
    """The periodic dunning pass (idempotent). Must not run inside a transaction (calls Stripe)."""
    result = DunningResult()
    _send_grace_reminders(now=now, result=result)

    def grace_over(sub: Subscription) -> tuple[str, Subscription]:
        recovered = _paid_up_at_stripe(sub=sub, now=now)
        if recovered is not None:
            return "recovered", recovered
        return "canceled", _cancel_and_sync(sub=sub, idempotency_key=f"dunning-cancel:{sub.pk}", now=now)

    expired = Subscription.objects.filter(status__in=list(LIVE_SUBSCRIPTION_STATUSES),
                                          grace_period_ends_at__lte=now).order_by("grace_period_ends_at")
    for sub, (outcome, synced) in _each_guarded(expired, grace_over, what="dunning cancel", result=result):
        if outcome == "recovered":
            result.recovered.append(sub.stripe_subscription_id)
            continue
        log_money("dunning.canceled", org=sub.organization_id, subscription=sub.stripe_subscription_id,
                  status=synced.status)
        result.canceled.append(sub.stripe_subscription_id)

    # Safety net: a trial whose end passed without Stripe telling us the outcome.
    stuck = Subscription.objects.filter(status=StripeSubscriptionStatus.TRIALING, trial_end__lte=now - TRIAL_END_SLACK)
    for sub, synced in _each_guarded(stuck, lambda s: _trial_resolve(sub=s, now=now), what="trial resolution",
                                     result=result):
        if synced is not None:
            result.trials_resolved.append(sub.stripe_subscription_id)

    # Safety net: an active paid period that ended without the renewal reaching us. Stripe is the
    # truth: re-read the subscription (outside any transaction) and apply it like a webhook would.
    # (past_due has its own path above: the plan keeps working through the grace period.)
    overdue = Subscription.objects.filter(status=StripeSubscriptionStatus.ACTIVE,
                                          current_period_end__lte=now - RENEWAL_SLACK).order_by("current_period_end")
    for sub, synced in _each_guarded(overdue, lambda s: _renewal_resync(sub=s, now=now), what="renewal re-sync",
                                     result=result):
        if synced.current_period_end != sub.current_period_end or synced.status != sub.status:
            result.renewals_resynced.append(sub.stripe_subscription_id)
    return result


def _each_guarded(subs, run, *, what: str, result: DunningResult):
    """(sub, run(sub)) for each subscription (read up front). One org's failure is logged and recorded
    in result.errors, and does not stop the others; the next pass retries it."""
    for sub in list(subs):
        try:
            outcome = run(sub)
        except Exception as exc:  # noqa: BLE001 - one org's failure must not stop the others
            logger.exception("%s of %s failed", what, sub.stripe_subscription_id)
            result.errors.append(f"{sub.stripe_subscription_id}: {exc}")
            continue
        yield sub, outcome


def _renewal_resync(*, sub: Subscription, now: dt.datetime) -> Subscription:
    _no_transaction()
    snap = stripe_gateway.subscription_retrieve(subscription_id=sub.stripe_subscription_id)
    return subscription_sync(stripe_subscription=snap, now=now)


def _no_transaction() -> None:
    if transaction.get_connection().in_atomic_block:
        raise RuntimeError("dunning calls Stripe: do not run it inside a transaction")


def _trial_resolve(*, sub: Subscription, now: dt.datetime) -> Subscription | None:
    _no_transaction()

    snap = stripe_gateway.subscription_retrieve(subscription_id=sub.stripe_subscription_id)
    obj = snap.obj
    trial_end = obj.get("trial_end") or 0
    still_trialing_past_end = obj.get("status") == "trialing" and trial_end and trial_end <= int(now.timestamp())
    has_card = bool(obj.get("default_payment_method") or obj.get("default_source"))
    if still_trialing_past_end and not has_card:
        # Trial ending without a card -> free.
        return _cancel_and_sync(sub=sub, idempotency_key=f"trial-expire-cancel:{sub.pk}", now=now)
    return subscription_sync(stripe_subscription=snap, now=now)
