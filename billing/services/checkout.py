"""Subscriptions through Stripe: start Checkout, open the billing portal, upgrade now (prorated),
cancel (at period end or now), status; and the Stripe price catalog (`stripe_setup`).

No Stripe call happens inside a DB transaction: the org row is read, Stripe is called with an
idempotency key derived from our own rows (org id / subscription id + the requested change), and
the result is recorded afterwards (customer id with a conditional UPDATE; subscription state via
`subscription_sync`, the same function the webhooks use).
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from billing_project.errors import Conflict, InvalidRequest
from organizations.models import Organization

from .. import stripe_gateway
from ..errors import BillingError
from ..models.subscriptions import LIVE_SUBSCRIPTION_STATUSES, Subscription
from ..plans import CURRENCY, PAID_PLAN_TIERS, PLANS, TOPUP_PACK_CREDITS, TOPUP_PACK_PRICE_CENTS, TRIAL_DAYS
from .subscriptions import subscription_sync

logger = logging.getLogger("billing.checkout")


# --- the price catalog ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CatalogPrice:
    setting: str            # settings / env name holding the price id
    lookup_key: str         # stable Stripe lookup key (our idempotency handle for the catalog)
    product_name: str
    unit_amount_cents: int  # from billing.plans, never re-declared
    recurring_interval: str | None


def catalog() -> list[CatalogPrice]:
    items = [CatalogPrice(f"STRIPE_PRICE_{tier.upper()}", f"plan_{tier}_monthly", f"{PLANS[tier].name} plan",
                          PLANS[tier].price_cents, "month") for tier in PAID_PLAN_TIERS]
    items.append(CatalogPrice("STRIPE_PRICE_CREDITS_500", "credits_500_pack",
                              f"{int(TOPUP_PACK_CREDITS)} credits", TOPUP_PACK_PRICE_CENTS, None))
    return items


def stripe_prices_ensure() -> dict[str, str]:
    """Create the plan and credit-pack prices where missing (found by lookup key; a price whose amount
    differs from billing.plans gets a new price that takes over the lookup key). Returns setting -> id."""
    existing = stripe_gateway.prices_by_lookup_keys([c.lookup_key for c in catalog()])
    result: dict[str, str] = {}
    for item in catalog():
        price = existing.get(item.lookup_key)
        interval = ((price or {}).get("recurring") or {}).get("interval")
        if price and price["unit_amount"] == item.unit_amount_cents and interval == item.recurring_interval \
                and price["currency"] == CURRENCY:
            result[item.setting] = price["id"]
            continue
        version = f"{item.lookup_key}:{item.unit_amount_cents}:{item.recurring_interval or 'once'}"
        product_id = price["product"] if price else stripe_gateway.product_create(
            name=item.product_name, metadata={"lookup_key": item.lookup_key},
            idempotency_key=f"stripe_setup:product:{version}")["id"]
        created = stripe_gateway.price_create(
            product_id=product_id, unit_amount_cents=item.unit_amount_cents, currency=CURRENCY,
            lookup_key=item.lookup_key, recurring_interval=item.recurring_interval,
            metadata={"lookup_key": item.lookup_key}, idempotency_key=f"stripe_setup:price:{version}")
        logger.info("stripe_setup created %s = %s", item.setting, created["id"])
        result[item.setting] = created["id"]
    return result


def price_id_for_tier(plan_tier: str) -> str:
    if plan_tier not in PAID_PLAN_TIERS:
        raise InvalidRequest(f"unknown paid plan {plan_tier!r}", code="INVALID_PLAN")
    setting = f"STRIPE_PRICE_{plan_tier.upper()}"
    price_id = getattr(settings, setting, "")
    if price_id:
        return price_id
    price = stripe_gateway.price_by_lookup_key(f"plan_{plan_tier}_monthly")
    if price is None:
        raise BillingError(f"{setting} is not configured; run manage.py stripe_setup", code="PRICE_NOT_CONFIGURED",
                           http_status=503)
    return price["id"]


# --- helpers --------------------------------------------------------------------------------------
def _no_transaction(what: str) -> None:
    # Blocks opened by Django's TestCase wrapper don't count (the same rule as `durable=True`).
    if any(not getattr(block, "_from_testcase", False) for block in transaction.get_connection().atomic_blocks):
        raise RuntimeError(f"{what}: Stripe must not be called inside a database transaction")


def _minute(now: dt.datetime) -> int:
    return int(now.timestamp()) // 60


def subscription_current(*, organization) -> Subscription | None:
    """The org's live subscription (trialing / active / past_due), newest first."""
    return (Subscription.objects.filter(organization=organization, status__in=LIVE_SUBSCRIPTION_STATUSES)
            .order_by("-created_at", "-pk").first())


def stripe_customer_ensure(*, organization, email: str | None, now: dt.datetime) -> str:
    """The org's Stripe customer id, creating the customer once. The idempotency key is the org's id,
    so a retry or a concurrent request gets the same customer; the id is recorded with a conditional
    UPDATE (first writer wins, the others re-read)."""
    if organization.stripe_customer_id:
        return organization.stripe_customer_id
    _no_transaction("stripe_customer_ensure")
    customer = stripe_gateway.customer_create(
        email=email, name=organization.name, metadata={"orgId": str(organization.pk), "orgSlug": organization.slug},
        idempotency_key=f"customer:org:{organization.pk}")
    Organization.objects.filter(pk=organization.pk, stripe_customer_id__isnull=True) \
        .update(stripe_customer_id=customer["id"])
    organization.refresh_from_db(fields=["stripe_customer_id"])
    if organization.stripe_customer_id != customer["id"]:
        logger.warning("org %s already had customer %s; created %s unused", organization.pk,
                       organization.stripe_customer_id, customer["id"])
    return organization.stripe_customer_id


# --- services -------------------------------------------------------------------------------------
def checkout_start(*, organization, plan_tier: str, email: str | None, now: dt.datetime,
                   success_url: str | None = None, cancel_url: str | None = None) -> dict[str, Any]:
    """A Checkout Session URL for `plan_tier`; a 7-day trial (no card needed) if the org never trialed."""
    price_id = price_id_for_tier(plan_tier)
    current = subscription_current(organization=organization)
    if current is not None:
        raise Conflict("the organization already has a subscription; upgrade or use the billing portal",
                       code="ALREADY_SUBSCRIBED")
    customer_id = stripe_customer_ensure(organization=organization, email=email, now=now)
    trial_days = TRIAL_DAYS if organization.trial_ends_at is None and PLANS[plan_tier].trial_eligible else None
    base = settings.APP_BASE_URL.rstrip("/")
    # Same org + plan within the same minute = the same session (double clicks); later = a new one.
    session = stripe_gateway.checkout_session_create(
        mode="subscription", customer_id=customer_id, price_id=price_id,
        success_url=success_url or f"{base}/settings/billing?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=cancel_url or f"{base}/settings/billing?checkout=canceled",
        metadata={"orgId": str(organization.pk), "planTier": plan_tier}, trial_period_days=trial_days,
        idempotency_key=f"checkout:org:{organization.pk}:{plan_tier}:{trial_days or 0}:{_minute(now)}")
    return {"url": session["url"], "sessionId": session["id"], "planTier": plan_tier, "trialDays": trial_days or 0}


def billing_portal_open(*, organization, now: dt.datetime, return_url: str | None = None) -> dict[str, Any]:
    if not organization.stripe_customer_id:
        raise Conflict("the organization has no billing account yet; subscribe first", code="NO_BILLING_ACCOUNT")
    _no_transaction("billing_portal_open")
    base = settings.APP_BASE_URL.rstrip("/")
    session = stripe_gateway.billing_portal_session_create(
        customer_id=organization.stripe_customer_id, return_url=return_url or f"{base}/settings/billing",
        idempotency_key=f"portal:org:{organization.pk}:{_minute(now)}")
    return {"url": session["url"]}


def _live_or_conflict(organization) -> Subscription:
    sub = subscription_current(organization=organization)
    if sub is None:
        raise Conflict("the organization has no active subscription", code="NO_SUBSCRIPTION")
    return sub


def subscription_upgrade(*, organization, plan_tier: str, now: dt.datetime) -> Subscription:
    """Move to a higher plan now: Stripe invoices the prorated difference at once and the new
    allowances apply immediately (subscription_sync on the returned object)."""
    price_id = price_id_for_tier(plan_tier)
    sub = _live_or_conflict(organization)
    if PLANS[plan_tier].rank <= PLANS[sub.plan_tier].rank:
        raise InvalidRequest(f"{plan_tier} is not an upgrade from {sub.plan_tier}; downgrades happen by "
                             "cancelling at period end and subscribing again", code="NOT_AN_UPGRADE")
    _no_transaction("subscription_upgrade")
    obj = stripe_gateway.subscription_update_price(
        subscription_id=sub.stripe_subscription_id, price_id=price_id, proration_behavior="always_invoice",
        idempotency_key=f"upgrade:{sub.stripe_subscription_id}:{plan_tier}")
    return subscription_sync(stripe_subscription=obj, now=now)


def subscription_cancel(*, organization, now: dt.datetime, at_period_end: bool = True) -> Subscription:
    """Cancel at the end of the period (default; the plan keeps working until then) or now."""
    sub = _live_or_conflict(organization)
    _no_transaction("subscription_cancel")
    if at_period_end and sub.cancel_at_period_end:
        return sub
    obj = stripe_gateway.subscription_cancel(
        subscription_id=sub.stripe_subscription_id, at_period_end=at_period_end,
        idempotency_key=f"cancel:{sub.stripe_subscription_id}:{'period_end' if at_period_end else 'now'}")
    return subscription_sync(stripe_subscription=obj, now=now)


def subscription_status(*, organization) -> dict[str, Any]:
    """What the dashboard and API show: the org's plan and its Stripe subscription (if any)."""
    sub = subscription_current(organization=organization) or (
        Subscription.objects.filter(organization=organization).order_by("-created_at", "-pk").first())

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "orgId": str(organization.pk),
        "planTier": organization.subscription_tier,
        "status": organization.subscription_status,
        "trialEndsAt": iso(organization.trial_ends_at),
        "trialUsed": organization.trial_ends_at is not None,
        "hasBillingAccount": bool(organization.stripe_customer_id),
        "subscription": None if sub is None else {
            "id": sub.stripe_subscription_id, "planTier": sub.plan_tier, "status": sub.status,
            "currentPeriodStart": iso(sub.current_period_start), "currentPeriodEnd": iso(sub.current_period_end),
            "trialEnd": iso(sub.trial_end), "cancelAtPeriodEnd": sub.cancel_at_period_end,
            "canceledAt": iso(sub.canceled_at), "endedAt": iso(sub.ended_at),
            "gracePeriodEndsAt": iso(sub.grace_period_ends_at),
        },
    }
