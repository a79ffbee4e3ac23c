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
from ..models.allowances import AllowanceChange
from ..models.balance import CreditBalance
from ..models.subscriptions import (
    ENDED_SUBSCRIPTION_STATUSES,
    LIVE_SUBSCRIPTION_STATUSES,
    StripeSubscriptionStatus,
    Subscription,
)
from ..notifications import notify_org_admins
from ..plans import PAID_PLAN_TIERS, PLANS
from ..stripe_gateway import SubscriptionSnapshot
from ..stripe_payloads import iso, stripe_id, stripe_ts
from .balance import balance_set_plan, balance_upgrade_prorated, free_period

logger = logging.getLogger("billing.subscriptions")

_PRICE_SETTINGS = (
    (PlanTier.STARTER, "STRIPE_PRICE_STARTER"),
    (PlanTier.PRO, "STRIPE_PRICE_PRO"),
    (PlanTier.MAX, "STRIPE_PRICE_MAX"),
)


# --- reading Stripe subscription payloads (shared with the webhook and dunning services) ---------

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


def subscription_organization_id(*, stripe_subscription: dict) -> uuid.UUID | None:
    """The org a Stripe subscription object belongs to (metadata `orgId`, else the customer's org, else
    the org of the row we already have for it), or None. Reads only our database."""
    org_id = organization_id_for_stripe(metadata=stripe_subscription.get("metadata"),
                                        customer_id=stripe_id(stripe_subscription.get("customer")))
    sub_id = stripe_id(stripe_subscription.get("id"))
    if org_id is None and sub_id:
        org_id = Subscription.objects.filter(stripe_subscription_id=sub_id) \
            .values_list("organization_id", flat=True).first()
    return org_id


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
    # Stripe's `pending_update` (an upgrade held back until its invoice is paid): its plan and expiry.
    pending_update_plan_tier: str = ""
    pending_update_expires_at: dt.datetime | None = None


def _parse_pending_update(obj: dict) -> tuple[str, dt.datetime | None]:
    pending = obj.get("pending_update") or {}
    if not pending:
        return "", None
    items = pending.get("subscription_items") or []
    price = (items[0].get("price") if items else None) or {}
    tier = plan_tier_for_price(price=price) if price else None
    if tier is None:
        logger.warning("subscription %s: pending update to a price we do not know: %r", obj.get("id"),
                       stripe_id(price))
        return "", None
    return tier, stripe_ts(pending.get("expires_at"))


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
    status = str(obj.get("status") or "")
    if status not in StripeSubscriptionStatus.values:
        raise BillingError(f"subscription {sub_id} has unknown status {status!r}", code="STRIPE_OBJECT_INVALID")
    period_start = item.get("current_period_start") or obj.get("current_period_start")
    period_end = item.get("current_period_end") or obj.get("current_period_end")
    if tier is None and status in ENDED_SUBSCRIPTION_STATUSES:
        # The end of a subscription we know does not depend on its price: a bare deletion payload
        # (no items) or a price since retired keeps the row's plan, price and period.
        known = Subscription.objects.filter(stripe_subscription_id=sub_id).first()
        if known is not None:
            tier, price = known.plan_tier, price or known.stripe_price_id
            period_start = period_start or (int(known.current_period_start.timestamp())
                                            if known.current_period_start else None)
            period_end = period_end or (int(known.current_period_end.timestamp()) if known.current_period_end else None)
    if tier is None:
        raise BillingError(f"subscription {sub_id} has a price we do not know: {stripe_id(price)!r}",
                           code="UNKNOWN_PRICE")
    pending_tier, pending_expires = _parse_pending_update(obj)
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
        pending_update_plan_tier=pending_tier,
        pending_update_expires_at=pending_expires,
    )


def _lock_balance(organization_id) -> None:
    """Take the balance row lock between the org's and the subscription's (the fixed lock order).
    The balance row belongs to the credit engine; we only lock it, and write it through its services."""
    list(CreditBalance.objects.select_for_update().filter(organization_id=organization_id).values_list("pk", flat=True))


def _upgrade_within_period(*, org: Organization, sub: Subscription, from_plan: str, effective_at: dt.datetime,
                           now: dt.datetime) -> None:
    """An upgrade inside a paid period: the added allowance of each tier, prorated by the time left
    (DESIGN "Upgrade"), recorded once as an AllowanceChange (a replay finds it and changes nothing)."""
    period_start, period_end = sub.current_period_start, sub.current_period_end
    change = AllowanceChange.objects.filter(organization=org, period_start=period_start,
                                            to_plan_tier=sub.plan_tier).first()
    included = balance_upgrade_prorated(
        organization_id=org.pk, from_plan=from_plan, plan_tier=sub.plan_tier, period_start=period_start,
        period_end=period_end, effective_at=effective_at, now=now,
        included=change.included() if change is not None else None)
    if change is None:
        AllowanceChange.objects.create(
            organization=org, subscription=sub, period_start=period_start, period_end=period_end,
            from_plan_tier=from_plan, to_plan_tier=sub.plan_tier, effective_at=min(max(effective_at, period_start),
                                                                                   period_end),
            created_at=now, **{f"included_{t}": n for t, n in included.items()})
    logger.info("org %s upgraded %s -> %s within period %s..%s at %s: included %s", org.pk, from_plan,
                sub.plan_tier, period_start, period_end, effective_at, included)


# --- the sync --------------------------------------------------------------------------------------

def subscription_sync(*, stripe_subscription: dict | SubscriptionSnapshot, now: dt.datetime,
                      event_created: int | None = None) -> Subscription:
    """Upsert our Subscription from a Stripe subscription object and apply it to the org and balance.

    `stripe_subscription`: an event's object (with `event_created`, the event's `created`) or a fresh
    API read (a `SubscriptionSnapshot`: the object and Stripe's time of the answer). Ordering, one
    rule for the subscription stream: a state older than the newest applied one (`last_event_created`)
    changes nothing; a fresh read is the newest state there is and moves that mark to its time, so a
    delayed older event delivered after it is dropped; a live subscription's period never moves back.
    Returns the (possibly unchanged) row.
    Raises BillingError ORG_NOT_FOUND / UNKNOWN_PRICE / STRIPE_OBJECT_INVALID.
    """
    if isinstance(stripe_subscription, SubscriptionSnapshot):
        obj, state_at = stripe_subscription.obj, stripe_subscription.as_of
    else:
        obj, state_at = stripe_subscription, (int(event_created) if event_created is not None else None)
    # The org first: another product's subscription is refused as not ours, not for its price.
    org_id = subscription_organization_id(stripe_subscription=obj)
    if org_id is None:
        raise BillingError(f"no organization for subscription {stripe_id(obj.get('id'))} "
                           f"(customer {stripe_id(obj.get('customer'))})", code="ORG_NOT_FOUND", http_status=404)
    parsed = _parse(obj)

    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org_id)
        _lock_balance(org.pk)
        sub = Subscription.objects.select_for_update().filter(
            stripe_subscription_id=parsed.stripe_subscription_id).first()
        if sub is not None and _older_than_applied(sub=sub, parsed=parsed, state_at=state_at):
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
        # The invoice stream (dunning) started a grace period at `dunning_event_created`: a subscription
        # state not newer than that failure (e.g. the renewal's `active` delivered after the failure of
        # the same second) does not end it; a newer `active`/`trialing` (Stripe got paid) does.
        older_than_failure = (previous is not None and sub.grace_period_ends_at is not None
                              and state_at is not None and state_at <= sub.dunning_event_created)
        if older_than_failure and previous.status == StripeSubscriptionStatus.PAST_DUE \
                and sub.status == StripeSubscriptionStatus.ACTIVE:
            sub.status = StripeSubscriptionStatus.PAST_DUE
        if sub.status in (StripeSubscriptionStatus.ACTIVE, StripeSubscriptionStatus.TRIALING) \
                and not older_than_failure:
            sub.grace_period_ends_at = None  # Stripe says it is paid up: the dunning grace is over
            sub.grace_ending_notified_at = None
        stated_at = stripe_ts(state_at) or now
        upgraded_at = _pending_update_track(sub=sub, parsed=parsed, stated_at=stated_at)
        if state_at is not None:
            sub.last_event_created = max(sub.last_event_created, int(state_at))
        sub.updated_at = now
        sub.full_clean(validate_unique=False)  # uniqueness is the DB's job (and the row lock's)
        sub.save()
        _apply_to_org(org=org, sub=sub, previous=previous, now=now, upgraded_at=upgraded_at or stated_at)
    return sub


def _older_than_applied(*, sub: Subscription, parsed: _Parsed, state_at: int | None) -> bool:
    """True (and logged) when `parsed` is older news than what the row already holds."""
    if state_at is not None and state_at < sub.last_event_created:
        logger.info("stale subscription state ignored: %s state of %s < applied %s",
                    sub.stripe_subscription_id, state_at, sub.last_event_created)
        return True
    if sub.status in ENDED_SUBSCRIPTION_STATUSES and parsed.status not in ENDED_SUBSCRIPTION_STATUSES:
        # Stripe never revives an ended subscription: this is older news carrying the same
        # `created` second as the deletion (ties are common: a cancel emits updated + deleted).
        logger.info("ended subscription %s not revived by %s state (of %s)", sub.stripe_subscription_id,
                    parsed.status, state_at)
        return True
    if (sub.status in LIVE_SUBSCRIPTION_STATUSES and parsed.status in LIVE_SUBSCRIPTION_STATUSES
            and sub.current_period_start and parsed.current_period_start
            and parsed.current_period_start < sub.current_period_start):
        # A live subscription's period only moves forward: this state is from an earlier period
        # (a delayed event of the same second as a read, a replay): applying it would reset usage.
        logger.info("subscription %s: state of period %s ignored, period %s already applied",
                    sub.stripe_subscription_id, parsed.current_period_start, sub.current_period_start)
        return True
    return False


def _pending_update_track(*, sub: Subscription, parsed: _Parsed, stated_at: dt.datetime) -> dt.datetime | None:
    """Mirror Stripe's `pending_update` on the row. Returns when a just-applied pending upgrade was asked
    for (the proration of its allowance starts there, as Stripe's proration of its price did)."""
    if parsed.pending_update_plan_tier:
        if sub.pending_update_plan_tier != parsed.pending_update_plan_tier or sub.pending_update_at is None:
            sub.pending_update_at = stated_at
        sub.pending_update_plan_tier = parsed.pending_update_plan_tier
        sub.pending_update_expires_at = parsed.pending_update_expires_at
        return None
    applied_at = sub.pending_update_at if sub.pending_update_plan_tier == parsed.plan_tier else None
    if sub.pending_update_plan_tier:
        logger.info("subscription %s: pending update to %s %s", sub.stripe_subscription_id,
                    sub.pending_update_plan_tier, "applied" if applied_at else "discarded")
    sub.pending_update_plan_tier, sub.pending_update_at, sub.pending_update_expires_at = "", None, None
    return applied_at


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


def _apply_to_org(*, org: Organization, sub: Subscription, previous: _Snapshot | None, now: dt.datetime,
                  upgraded_at: dt.datetime) -> None:
    org_fields: set[str] = set()
    if sub.trial_end and org.trial_ends_at != sub.trial_end:
        org.trial_ends_at = sub.trial_end  # non-null = the org has used its one trial
        org_fields.add("trial_ends_at")

    if sub.status in LIVE_SUBSCRIPTION_STATUSES:
        new_period = previous is None or previous.current_period_start != sub.current_period_start
        period_moved = previous is None or previous.current_period_end != sub.current_period_end
        tier_changed = org.subscription_tier != sub.plan_tier
        prorated = (not new_period and tier_changed and sub.status != StripeSubscriptionStatus.TRIALING
                    and org.subscription_tier in PAID_PLAN_TIERS
                    and PLANS[sub.plan_tier].rank > PLANS[org.subscription_tier].rank
                    and sub.current_period_start is not None and sub.current_period_end is not None)
        if prorated:
            _upgrade_within_period(org=org, sub=sub, from_plan=org.subscription_tier, effective_at=upgraded_at,
                                   now=now)
        elif new_period or period_moved or tier_changed:
            balance_set_plan(organization_id=org.pk, plan_tier=sub.plan_tier, now=now,
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
            # Free from now until the org's next monthly anchor (then monthly again, anchored).
            balance_set_plan(organization_id=org.pk, plan_tier=PlanTier.FREE, now=now, reset_usage=True,
                             period_start=now, period_end=free_period(anchor=org.created_at, now=now)[1])
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
