"""Subscriptions: mirror a Stripe subscription object into our rows (the only writer of plan state).

`subscription_sync` is the one entry point. Webhook handlers call it with the event's `created`
time; services that just read the subscription from Stripe (checkout return, dunning cancel)
call it without one. It is an idempotent upsert:

- the org comes from the subscription's metadata `orgId`, else from the org whose
  `stripe_customer_id` is the subscription's customer;
- the plan tier comes from the price id (settings.STRIPE_PRICE_*) or the price's lookup key;
- an event older than the newest one already applied to the row changes nothing;
- lock order organization -> balance -> subscription (DESIGN "Locking");
- the balance follows the object: a new period resets used counters (top-up credits roll
  over), a higher plan in the same period changes allowances at once (an upgrade with
  proration), a LOWER price within the same period is a deferred downgrade (`pending_plan_tier`:
  the plan in effect stays until the period ends, see `_effective_plan`), an ended/unpaid/paused
  subscription puts the org on free.

Stripe API shapes: current_period_* live on the subscription item since API 2025-03-31 and at
the top level before; both are read.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from organizations.models import Organization, PlanTier, SubscriptionStatus

from ..errors import BillingError
from ..models.subscriptions import (
    ENDED_SUBSCRIPTION_STATUSES,
    LIVE_SUBSCRIPTION_STATUSES,
    StripeSubscriptionStatus,
    Subscription,
)
from ..notifications import notify_org_admins
from ..plans import PAID_PLAN_TIERS, PLANS

logger = logging.getLogger("billing.subscriptions")

_PRICE_SETTINGS = (
    (PlanTier.STARTER, "STRIPE_PRICE_STARTER"),
    (PlanTier.PRO, "STRIPE_PRICE_PRO"),
    (PlanTier.MAX, "STRIPE_PRICE_MAX"),
)


# --- small parsing helpers (shared with the webhook and dunning services) -----------------------

def stripe_id(value: Any) -> str | None:
    """`"cus_1"` or `{"id": "cus_1", …}` (an expanded object) -> `"cus_1"`; None/"" -> None."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


def stripe_ts(value: Any) -> dt.datetime | None:
    """Unix seconds -> aware UTC datetime (None stays None)."""
    if value in (None, "", 0):
        return None
    return dt.datetime.fromtimestamp(int(value), tz=dt.timezone.utc)


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def plan_tier_for_price(*, price: Any) -> str | None:
    """Our paid plan tier for a Stripe price (id string or price object), or None if unknown.
    Configured price ids win; otherwise the lookup key (`starter`/`pro`/`max`, also `plan_pro`-style)."""
    price_id = stripe_id(price)
    if price_id:
        for tier, setting in _PRICE_SETTINGS:
            if getattr(settings, setting, "") and getattr(settings, setting) == price_id:
                return tier
    lookup_key = (price.get("lookup_key") or "") if isinstance(price, dict) else ""
    key = lookup_key.lower()
    if key in PAID_PLAN_TIERS:
        return key
    parts = key.replace("-", "_").replace(":", "_").split("_")
    for tier in PAID_PLAN_TIERS:
        if tier in parts:
            return tier
    return None


def organization_id_for_stripe(*, metadata: dict | None, customer_id: str | None) -> uuid.UUID | None:
    """The org a Stripe object belongs to: metadata `orgId` if it names an org, else the customer's org."""
    raw = (metadata or {}).get("orgId") or (metadata or {}).get("org_id")
    if raw:
        try:
            org_uuid = uuid.UUID(str(raw))
        except ValueError:
            logger.warning("stripe object with malformed orgId metadata %r", raw)
        else:
            if Organization.objects.filter(pk=org_uuid).exists():
                return org_uuid
            logger.warning("stripe object names unknown org %s", raw)
    if customer_id:
        org_pk = Organization.objects.filter(stripe_customer_id=customer_id).values_list("pk", flat=True).first()
        if org_pk is not None:
            return org_pk
    return None


# --- parsing a subscription object ----------------------------------------------------------------

@dataclass(frozen=True)
class _Parsed:
    stripe_subscription_id: str
    stripe_customer_id: str
    stripe_price_id: str
    plan_tier: str
    status: str
    current_period_start: dt.datetime | None
    current_period_end: dt.datetime | None
    trial_start: dt.datetime | None
    trial_end: dt.datetime | None
    cancel_at_period_end: bool
    canceled_at: dt.datetime | None
    ended_at: dt.datetime | None
    default_payment_method_id: str


def _parse(obj: dict) -> _Parsed:
    sub_id = stripe_id(obj.get("id"))
    if not sub_id or not str(sub_id).startswith("sub_"):
        raise BillingError(f"not a Stripe subscription: {sub_id!r}", code="STRIPE_OBJECT_INVALID")
    items = ((obj.get("items") or {}).get("data") or [])
    item = items[0] if items else {}
    price = item.get("price") or item.get("plan") or obj.get("plan") or {}
    tier = plan_tier_for_price(price=price)
    if tier is None:
        meta_tier = str((obj.get("metadata") or {}).get("planTier") or "").lower()
        tier = meta_tier if meta_tier in PAID_PLAN_TIERS else None
    if tier is None:
        raise BillingError(f"subscription {sub_id} has a price we do not know: {stripe_id(price)!r}",
                           code="UNKNOWN_PRICE")
    status = str(obj.get("status") or "")
    if status not in StripeSubscriptionStatus.values:
        raise BillingError(f"subscription {sub_id} has unknown status {status!r}", code="STRIPE_OBJECT_INVALID")
    period_start = item.get("current_period_start") or obj.get("current_period_start")
    period_end = item.get("current_period_end") or obj.get("current_period_end")
    return _Parsed(
        stripe_subscription_id=sub_id,
        stripe_customer_id=stripe_id(obj.get("customer")) or "",
        stripe_price_id=stripe_id(price) or "",
        plan_tier=tier,
        status=status,
        current_period_start=stripe_ts(period_start),
        current_period_end=stripe_ts(period_end),
        trial_start=stripe_ts(obj.get("trial_start")),
        trial_end=stripe_ts(obj.get("trial_end")),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        canceled_at=stripe_ts(obj.get("canceled_at")),
        ended_at=stripe_ts(obj.get("ended_at")),
        default_payment_method_id=stripe_id(obj.get("default_payment_method")) or "",
    )


def _lock_balance(organization_id) -> None:
    """Take the balance row lock between the org's and the subscription's (the fixed lock order).
    The balance row belongs to the credit engine; we only lock it, and write it through its services."""
    try:
        from ..models.balance import CreditBalance  # noqa: PLC0415 - engine model, may be absent in early builds
    except ImportError:
        return
    list(CreditBalance.objects.select_for_update().filter(organization_id=organization_id).values_list("pk", flat=True))


def _balance_set_plan(**kwargs: Any) -> None:
    from .balance import balance_set_plan  # noqa: PLC0415 - the engine's service; imported late to avoid cycles

    balance_set_plan(**kwargs)


# --- the sync --------------------------------------------------------------------------------------

def subscription_sync(*, stripe_subscription: dict, now: dt.datetime, event_created: int | None = None) -> Subscription:
    """Upsert our Subscription from a Stripe subscription object and apply it to the org and balance.

    `event_created`: the `created` of the event that carried the object; None for a fresh API read
    (applied unconditionally, without moving the ordering mark). Returns the (possibly unchanged) row.
    Raises BillingError ORG_NOT_FOUND / UNKNOWN_PRICE / STRIPE_OBJECT_INVALID.
    """
    parsed = _parse(stripe_subscription)
    org_id = organization_id_for_stripe(metadata=stripe_subscription.get("metadata"),
                                        customer_id=parsed.stripe_customer_id or None)
    if org_id is None:
        existing_org = Subscription.objects.filter(stripe_subscription_id=parsed.stripe_subscription_id) \
            .values_list("organization_id", flat=True).first()
        if existing_org is None:
            raise BillingError(f"no organization for subscription {parsed.stripe_subscription_id} "
                               f"(customer {parsed.stripe_customer_id})", code="ORG_NOT_FOUND", http_status=404)
        org_id = existing_org

    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org_id)
        _lock_balance(org.pk)
        sub = Subscription.objects.select_for_update().filter(
            stripe_subscription_id=parsed.stripe_subscription_id).first()
        if sub is not None and event_created is not None and event_created < sub.last_event_created:
            logger.info("stale subscription state ignored: %s event created %s < applied %s",
                        sub.stripe_subscription_id, event_created, sub.last_event_created)
            return sub
        if sub is not None and sub.status in ENDED_SUBSCRIPTION_STATUSES \
                and parsed.status not in ENDED_SUBSCRIPTION_STATUSES:
            # Stripe never revives an ended subscription: this is older news carrying the same
            # `created` second as the deletion (ties are common: a cancel emits updated + deleted).
            logger.info("ended subscription %s not revived by %s state (event created %s)",
                        sub.stripe_subscription_id, parsed.status, event_created)
            return sub
        previous = _Snapshot.of(sub)
        if sub is None:
            sub = Subscription(organization=org, stripe_subscription_id=parsed.stripe_subscription_id, created_at=now)
        elif sub.organization_id != org.pk:
            raise BillingError(f"subscription {sub.stripe_subscription_id} moved organizations", code="ORG_MISMATCH")
        for field in ("stripe_customer_id", "stripe_price_id", "plan_tier", "status", "current_period_start",
                      "current_period_end", "trial_start", "trial_end", "cancel_at_period_end", "canceled_at",
                      "ended_at", "default_payment_method_id"):
            setattr(sub, field, getattr(parsed, field))
        sub.plan_tier, sub.pending_plan_tier = _effective_plan(parsed=parsed, previous=previous)
        if sub.status in (StripeSubscriptionStatus.ACTIVE, StripeSubscriptionStatus.TRIALING):
            sub.grace_period_ends_at = None  # Stripe says it is paid up: the dunning grace is over
        if event_created is not None:
            sub.last_event_created = max(sub.last_event_created, int(event_created))
        sub.updated_at = now
        sub.full_clean(validate_unique=False)  # uniqueness is the DB's job (and the row lock's)
        sub.save()
        _apply_to_org(org=org, sub=sub, previous=previous, now=now)
    return sub


def _effective_plan(*, parsed: _Parsed, previous: _Snapshot | None) -> tuple[str, str]:
    """(plan in effect, pending lower plan or "") for a subscription object.

    DESIGN: "Upgrade: new allowances at once. Downgrade: at period end." Stripe bills a downgrade
    from the next period when its price is switched with proration_behavior=none; the allowances
    the org paid for stay until the period ends. So a LOWER price seen within the SAME period of a
    live subscription is a deferred downgrade: the plan in effect stays, the lower one is pending.
    A new period (or a higher / equal price: upgrade, "keep plan") applies the price's plan at once.
    Pure function of (object, previous row), so replays and re-reads give the same answer."""
    stripe_tier = parsed.plan_tier
    if (previous is not None and parsed.status in LIVE_SUBSCRIPTION_STATUSES
            and previous.status in LIVE_SUBSCRIPTION_STATUSES
            and previous.current_period_start == parsed.current_period_start
            and PLANS[stripe_tier].rank < PLANS[previous.plan_tier].rank):
        return previous.plan_tier, stripe_tier
    return stripe_tier, ""


@dataclass(frozen=True)
class _Snapshot:
    status: str
    plan_tier: str
    current_period_start: dt.datetime | None
    current_period_end: dt.datetime | None
    cancel_at_period_end: bool

    @classmethod
    def of(cls, sub: Subscription | None) -> _Snapshot | None:
        if sub is None:
            return None
        return cls(status=sub.status, plan_tier=sub.plan_tier, current_period_start=sub.current_period_start,
                   current_period_end=sub.current_period_end, cancel_at_period_end=sub.cancel_at_period_end)


def _apply_to_org(*, org: Organization, sub: Subscription, previous: _Snapshot | None, now: dt.datetime) -> None:
    org_fields: set[str] = set()
    if sub.trial_end and org.trial_ends_at != sub.trial_end:
        org.trial_ends_at = sub.trial_end  # non-null = the org has used its one trial
        org_fields.add("trial_ends_at")

    if sub.status in LIVE_SUBSCRIPTION_STATUSES:
        new_period = previous is None or previous.current_period_start != sub.current_period_start
        period_moved = previous is None or previous.current_period_end != sub.current_period_end
        tier_changed = org.subscription_tier != sub.plan_tier
        if new_period or period_moved or tier_changed:
            _balance_set_plan(organization_id=org.pk, plan_tier=sub.plan_tier, now=now,
                              period_start=sub.current_period_start, period_end=sub.current_period_end,
                              reset_usage=new_period)
            logger.info("org %s plan %s (period %s..%s, reset=%s) from %s", org.pk, sub.plan_tier,
                        sub.current_period_start, sub.current_period_end, new_period, sub.stripe_subscription_id)
        if tier_changed:
            org.subscription_tier = sub.plan_tier
            org_fields.add("subscription_tier")
        if org.subscription_status != sub.status:
            org.subscription_status = sub.status
            org_fields.add("subscription_status")
        if sub.cancel_at_period_end and (previous is None or not previous.cancel_at_period_end):
            notify_org_admins(organization_id=org.pk, kind="subscription_canceled", context={
                "plan": PLANS[sub.plan_tier].name, "ends_at": iso(sub.current_period_end), "immediate": False,
            })
    elif sub.status == StripeSubscriptionStatus.INCOMPLETE:
        pass  # first payment pending: the org keeps whatever it has until Stripe decides
    else:
        # canceled / incomplete_expired / unpaid / paused: this subscription's plan no longer applies.
        other_live = (Subscription.objects.filter(organization=org, status__in=list(LIVE_SUBSCRIPTION_STATUSES))
                      .exclude(pk=sub.pk).exists())
        if not other_live and org.subscription_tier != PlanTier.FREE:
            _balance_set_plan(organization_id=org.pk, plan_tier=PlanTier.FREE, now=now, reset_usage=True)
            from_tier = org.subscription_tier
            org.subscription_tier = PlanTier.FREE
            org_fields.add("subscription_tier")
            was_trial = previous is not None and previous.status == StripeSubscriptionStatus.TRIALING
            kind = "trial_ended" if was_trial else "downgraded_free"
            notify_org_admins(organization_id=org.pk, kind=kind, context={
                "previous_plan": PLANS[from_tier].name, "reason": sub.status,
                "stripe_subscription_id": sub.stripe_subscription_id,
            })
            logger.info("org %s downgraded %s -> free (%s %s)", org.pk, from_tier, sub.stripe_subscription_id,
                        sub.status)
        elif (not other_live and sub.status in ENDED_SUBSCRIPTION_STATUSES
              and previous is not None and previous.status not in ENDED_SUBSCRIPTION_STATUSES):
            notify_org_admins(organization_id=org.pk, kind="subscription_canceled", context={
                "plan": PLANS[sub.plan_tier].name, "ends_at": iso(sub.ended_at), "immediate": True,
            })
        if not other_live and org.subscription_status != SubscriptionStatus.ACTIVE:
            org.subscription_status = SubscriptionStatus.ACTIVE  # a free org without a subscription is active
            org_fields.add("subscription_status")
    if org_fields:
        org.full_clean(validate_unique=False)
        org.save(update_fields=sorted(org_fields))
