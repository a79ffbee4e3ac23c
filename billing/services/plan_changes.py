"""Plan changes through Stripe: start Checkout, open the billing portal, upgrade now (prorated),
downgrade at period end, cancel (at period end or now), extend a trial, status; and the Stripe price
catalog and portal configuration (`stripe_setup`). Stripe's answers are applied by `subscription_sync`.

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
from django.db.models import Q

from billing_project.errors import Conflict, InvalidRequest
from organizations.models import Organization

from .. import stripe_gateway
from ..errors import BillingError
from ..models.checkout_intents import CheckoutIntent, CheckoutIntentStatus
from ..models.invoices import Invoice, InvoiceStatus
from ..models.subscriptions import LIVE_SUBSCRIPTION_STATUSES, Subscription
from ..plans import CURRENCY, PAID_PLAN_TIERS, PLANS, TOPUP_PACK_CREDITS, TOPUP_PACK_PRICE_CENTS, TRIAL_DAYS
from ..stripe_payloads import PortalConfiguration, stripe_ts
from .subscription_sync import subscription_sync

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
        if price and price.unit_amount_cents == item.unit_amount_cents \
                and price.recurring_interval == item.recurring_interval and price.currency == CURRENCY:
            result[item.setting] = price.id
            continue
        version = f"{item.lookup_key}:{item.unit_amount_cents}:{item.recurring_interval or 'once'}"
        product_id = price.product_id if price else stripe_gateway.product_create(
            name=item.product_name, metadata={"lookup_key": item.lookup_key},
            idempotency_key=f"stripe_setup:product:{version}").id
        created = stripe_gateway.price_create(
            product_id=product_id, unit_amount_cents=item.unit_amount_cents, currency=CURRENCY,
            lookup_key=item.lookup_key, recurring_interval=item.recurring_interval,
            metadata={"lookup_key": item.lookup_key}, idempotency_key=f"stripe_setup:price:{version}")
        logger.info("stripe_setup created %s = %s", item.setting, created.id)
        result[item.setting] = created.id
    return result


#: Metadata naming the billing portal configuration stripe_setup manages (bump the version when the
#: features change: a new configuration is created and found instead of the old one).
PORTAL_CONFIGURATION_METADATA = {"managed_by": "stripe_setup", "portal_configuration": "billing-v1"}
#: What customers may do in the Stripe portal. No plan switching: Stripe's would prorate a downgrade
#: (a refund of unused time while the higher allowance stays) and grant an upgrade before it is paid;
#: plan changes go through our own flow. Cancelling keeps the paid period, without proration.
PORTAL_FEATURES: dict[str, Any] = {
    "customer_update": {"enabled": False},
    "invoice_history": {"enabled": True},
    "payment_method_update": {"enabled": True},
    "subscription_cancel": {"enabled": True, "mode": "at_period_end", "proration_behavior": "none"},
    "subscription_update": {"enabled": False},
}


def _portal_configuration_is_ours(conf: PortalConfiguration) -> bool:
    return conf.active and all(conf.metadata.get(k) == v for k, v in PORTAL_CONFIGURATION_METADATA.items())


def stripe_portal_configuration_find() -> str | None:
    """Our portal configuration's id: the setting, else the active one with our metadata at Stripe."""
    if settings.STRIPE_PORTAL_CONFIGURATION:
        return settings.STRIPE_PORTAL_CONFIGURATION
    for conf in stripe_gateway.billing_portal_configuration_list():
        if _portal_configuration_is_ours(conf):
            return conf.id
    return None


def stripe_portal_configuration_ensure() -> str:
    """Find (by metadata) or create the portal configuration; returns its id (stripe_setup, test setup)."""
    for conf in stripe_gateway.billing_portal_configuration_list():
        if _portal_configuration_is_ours(conf):
            return conf.id
    created = stripe_gateway.billing_portal_configuration_create(
        features=PORTAL_FEATURES, metadata=dict(PORTAL_CONFIGURATION_METADATA),
        idempotency_key=f"stripe_setup:portal_configuration:{PORTAL_CONFIGURATION_METADATA['portal_configuration']}")
    logger.info("stripe_setup created STRIPE_PORTAL_CONFIGURATION = %s", created.id)
    return created.id


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
    return price.id


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


def subscription_shown(*, organization) -> Subscription | None:
    """The subscription the org's pages and status show: the live one, else the newest that ended."""
    return subscription_current(organization=organization) or (
        Subscription.objects.filter(organization=organization).order_by("-created_at", "-pk").first())


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
        .update(stripe_customer_id=customer.id)
    organization.refresh_from_db(fields=["stripe_customer_id"])
    if organization.stripe_customer_id != customer.id:
        logger.warning("org %s already had customer %s; created %s unused", organization.pk,
                       organization.stripe_customer_id, customer.id)
    return organization.stripe_customer_id


# --- services -------------------------------------------------------------------------------------
#: An open intent whose Stripe call started this long ago without a recorded session is stuck
#: (listed by reconcile --stripe / the daily health summary), not reused.
CHECKOUT_INTENT_STALE_AFTER = dt.timedelta(minutes=10)
#: An open session is handed out again only while it has at least this long left before it expires.
CHECKOUT_SESSION_MIN_LIFETIME = dt.timedelta(minutes=30)


def _checkout_intent_reusable(intent: CheckoutIntent, *, plan_tier: str, trial_days: int, now: dt.datetime) -> bool:
    if intent.plan_tier != plan_tier or intent.trial_days != trial_days:
        return False
    if intent.session_expires_at is not None and intent.session_expires_at < now + CHECKOUT_SESSION_MIN_LIFETIME:
        return False
    if not intent.stripe_checkout_session_id and intent.started_at is not None \
            and intent.started_at < now - CHECKOUT_INTENT_STALE_AFTER:
        return False  # stuck mid-call: leave it for ops, start a fresh intent
    return True


class _SessionStillOpen(Exception):
    """The open intent to supersede has a session Stripe may still complete: expire it there first."""

    def __init__(self, intent: CheckoutIntent) -> None:
        super().__init__(intent.stripe_checkout_session_id)
        self.intent = intent


def checkout_session_expire_at_stripe(*, intent: CheckoutIntent) -> None:
    """Make the intent's Checkout Session uncompletable at Stripe (outside any transaction). A session
    the customer already completed means the org is subscribed (our webhook has not landed yet):
    Conflict ALREADY_SUBSCRIBED. An already expired session is fine."""
    _no_transaction("checkout_session_expire_at_stripe")
    session_id = intent.stripe_checkout_session_id
    try:
        stripe_gateway.checkout_session_expire(session_id=session_id, idempotency_key=f"checkout-expire:{intent.pk}")
    except BillingError as exc:
        if exc.code != "STRIPE_INVALID_REQUEST":
            raise
        state = stripe_gateway.checkout_session_retrieve(session_id).status
        if state == "complete":
            raise Conflict("the organization already completed a checkout; its subscription is being set up",
                           code="ALREADY_SUBSCRIBED") from exc
        if state != "expired":
            raise
    logger.info("checkout intent %s: session %s expired at Stripe (superseded)", intent.pk, session_id)


def checkout_intent_open(*, organization, plan_tier: str, trial_days: int, now: dt.datetime,
                         expired_session_ids: frozenset[str] = frozenset()) -> CheckoutIntent:
    """The org's open checkout intent for this plan (a double click), or a new committed one. An open
    intent for another plan (or too old) is expired first: one open intent per org (DB constraint).
    Its Checkout Session must already be expired at Stripe (`expired_session_ids`), else
    `_SessionStillOpen` is raised for the caller to do that outside the transaction: two tabs must
    never both be able to complete a checkout (two subscriptions, two trials).
    Serialised on the organization row lock (lock order organization first)."""
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=organization.pk).values_list("pk", flat=True).first()
        current = CheckoutIntent.objects.select_for_update().filter(organization=organization, open_slot=True).first()
        if current is not None:
            if _checkout_intent_reusable(current, plan_tier=plan_tier, trial_days=trial_days, now=now):
                return current
            if current.stripe_checkout_session_id and current.stripe_checkout_session_id not in expired_session_ids:
                raise _SessionStillOpen(current)
            if current.status == CheckoutIntentStatus.STARTED and not current.stripe_checkout_session_id:
                logger.warning("checkout intent %s left started without a session; superseded", current.pk)
            CheckoutIntent.objects.filter(pk=current.pk, open_slot=True).update(
                status=CheckoutIntentStatus.EXPIRED, open_slot=None, completed_at=now)
        intent = CheckoutIntent(organization=organization, plan_tier=plan_tier, trial_days=trial_days,
                                status=CheckoutIntentStatus.CREATED, open_slot=True, created_at=now)
        intent.full_clean(validate_unique=False)  # one-open-per-org is the DB's (and the row lock's) job
        intent.save()
    return intent


def checkout_intent_complete(*, stripe_session: dict, now: dt.datetime) -> int:
    """checkout.session.completed (subscription mode): mark its intent completed. Found by the
    recorded session id, else by the `checkoutIntentId` metadata (the id was never recorded: we
    crashed between Stripe's answer and the UPDATE). Idempotent; returns the rows changed (0/1)."""
    session_id = str(stripe_session.get("id") or "")
    intent_ref = str((stripe_session.get("metadata") or {}).get("checkoutIntentId") or "")
    match = Q(stripe_checkout_session_id=session_id) if session_id else Q(pk__in=[])
    if intent_ref.isdigit():
        match |= Q(pk=int(intent_ref), stripe_checkout_session_id__isnull=True)
    changed = CheckoutIntent.objects.filter(match, open_slot=True).update(
        status=CheckoutIntentStatus.COMPLETED, open_slot=None, completed_at=now)
    if changed and session_id:
        CheckoutIntent.objects.filter(match, stripe_checkout_session_id__isnull=True) \
            .update(stripe_checkout_session_id=session_id)
    return changed


def checkout_intent_expire(*, stripe_session: dict, now: dt.datetime) -> int:
    """checkout.session.expired: the intent's session can no longer be completed."""
    session_id = str(stripe_session.get("id") or "")
    if not session_id:
        return 0
    return CheckoutIntent.objects.filter(stripe_checkout_session_id=session_id, open_slot=True).update(
        status=CheckoutIntentStatus.EXPIRED, open_slot=None, completed_at=now)


def _checkout_result(intent: CheckoutIntent, *, reused: bool) -> dict[str, Any]:
    return {"url": intent.checkout_url, "sessionId": intent.stripe_checkout_session_id,
            "planTier": intent.plan_tier, "trialDays": intent.trial_days, "intentId": intent.pk, "reused": reused}


def checkout_start(*, organization, plan_tier: str, email: str | None, now: dt.datetime,
                   success_url: str | None = None, cancel_url: str | None = None) -> dict[str, Any]:
    """A Checkout Session URL for `plan_tier`; a 7-day trial (no card needed) if the org never trialed.

    Outgoing idempotency from an intent row (STYLE): the CheckoutIntent is committed first, marked
    STARTED, Stripe is called with `checkout:{intent.pk}`, and the session id/URL are recorded after.
    A second click while that intent is open gets the same session URL back (no second session)."""
    price_id = price_id_for_tier(plan_tier)
    current = subscription_current(organization=organization)
    if current is not None:
        raise Conflict("the organization already has a subscription; upgrade or use the billing portal",
                       code="ALREADY_SUBSCRIBED")
    customer_id = stripe_customer_ensure(organization=organization, email=email, now=now)
    trial_days = TRIAL_DAYS if organization.trial_ends_at is None and PLANS[plan_tier].trial_eligible else 0
    expired: set[str] = set()
    for _attempt in range(3):
        try:
            intent = checkout_intent_open(organization=organization, plan_tier=plan_tier, trial_days=trial_days,
                                          now=now, expired_session_ids=frozenset(expired))
            break
        except _SessionStillOpen as still_open:
            checkout_session_expire_at_stripe(intent=still_open.intent)
            expired.add(still_open.intent.stripe_checkout_session_id)
    else:
        raise Conflict("another checkout is being started for this organization; try again",
                       code="CHECKOUT_IN_PROGRESS")
    if intent.stripe_checkout_session_id and intent.checkout_url:
        logger.info("checkout intent %s reused (session %s)", intent.pk, intent.stripe_checkout_session_id)
        return _checkout_result(intent, reused=True)
    _no_transaction("checkout_start")
    CheckoutIntent.objects.filter(pk=intent.pk, status=CheckoutIntentStatus.CREATED).update(
        status=CheckoutIntentStatus.STARTED, started_at=now)
    base = settings.APP_BASE_URL.rstrip("/")
    session = stripe_gateway.checkout_session_create(
        mode="subscription", customer_id=customer_id, price_id=price_id,
        success_url=success_url or f"{base}/settings/billing?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
        cancel_url=cancel_url or f"{base}/settings/billing?checkout=canceled",
        metadata={"orgId": str(organization.pk), "planTier": plan_tier, "checkoutIntentId": str(intent.pk)},
        trial_period_days=trial_days or None, idempotency_key=f"checkout:{intent.pk}")
    CheckoutIntent.objects.filter(pk=intent.pk, stripe_checkout_session_id__isnull=True).update(
        stripe_checkout_session_id=session.id, checkout_url=session.url, session_expires_at=session.expires_at)
    intent.refresh_from_db()
    if intent.status == CheckoutIntentStatus.EXPIRED and intent.stripe_checkout_session_id == session.id:
        # Another tab superseded this intent while we were calling Stripe (it saw no session to expire):
        # expire ours ourselves, so only the newer checkout can be completed.
        checkout_session_expire_at_stripe(intent=intent)
        raise Conflict("a checkout for another plan replaced this one", code="CHECKOUT_SUPERSEDED")
    logger.info("checkout intent %s started session %s (%s, trial %s)", intent.pk, session.id, plan_tier,
                trial_days)
    return {**_checkout_result(intent, reused=False), "url": session.url, "sessionId": session.id}


def billing_portal_open(*, organization, now: dt.datetime, return_url: str | None = None) -> dict[str, Any]:
    if not organization.stripe_customer_id:
        raise Conflict("the organization has no billing account yet; subscribe first", code="NO_BILLING_ACCOUNT")
    _no_transaction("billing_portal_open")
    configuration = stripe_portal_configuration_find()
    if configuration is None:
        # Never fall back to Stripe's default configuration: it lets customers switch plans with prorations.
        raise BillingError("the billing portal is not configured; run manage.py stripe_setup",
                           code="PORTAL_NOT_CONFIGURED", http_status=503)
    base = settings.APP_BASE_URL.rstrip("/")
    session = stripe_gateway.billing_portal_session_create(
        customer_id=organization.stripe_customer_id, return_url=return_url or f"{base}/settings/billing",
        configuration=configuration, idempotency_key=f"portal:org:{organization.pk}:{_minute(now)}:{configuration}")
    return {"url": session.url}


def _live_or_conflict(organization) -> Subscription:
    sub = subscription_current(organization=organization)
    if sub is None:
        raise Conflict("the organization has no active subscription", code="NO_SUBSCRIPTION")
    return sub


def _plan_change_key(sub: Subscription, *, kind: str, to_price_id: str) -> str:
    """Idempotency key derived from our subscription row: the same click on the same row state
    (a double click, a retry) maps to one Stripe request; after the row changed (synced), a new
    request gets a new key (Stripe keeps keys for 24 h: a later downgrade -> keep -> downgrade must
    not replay the first answer)."""
    return f"{kind}:{sub.stripe_subscription_id}:{sub.stripe_price_id or '-'}->{to_price_id}:{_row_state(sub)}"


def _row_state(sub: Subscription) -> int:
    """The row's state in idempotency keys: its last write, in microseconds."""
    return int(sub.updated_at.timestamp() * 1_000_000)


def _price_change(sub: Subscription, *, kind: str, price_id: str, proration_behavior: str,
                  now: dt.datetime) -> Subscription:
    _no_transaction(f"subscription_{kind}")
    snap = stripe_gateway.subscription_update_price(
        subscription_id=sub.stripe_subscription_id, price_id=price_id, proration_behavior=proration_behavior,
        idempotency_key=_plan_change_key(sub, kind=kind, to_price_id=price_id))
    return subscription_sync(stripe_subscription=snap, now=now)


class UpgradeNotPaid(BillingError):
    """Stripe holds the upgrade back: its proration invoice is unpaid (declined card, 3-D Secure).
    Plan, allowances and status are unchanged; `hostedInvoiceUrl` is where to finish or pay it."""

    http_status = 402


def subscription_upgrade(*, organization, plan_tier: str, now: dt.datetime) -> Subscription:
    """Move to a higher plan now. Stripe invoices the prorated difference at once with
    `payment_behavior=pending_if_incomplete`: the new price, and with it the new plan and its (prorated)
    allowances, applies only once that invoice is paid. Declined / needs authentication: raises
    UpgradeNotPaid (402, code CARD_DECLINED / AUTHENTICATION_REQUIRED / …, the plan in effect and the
    hosted invoice link); nothing changes here, and Stripe discards the update if it stays unpaid.
    Upgrading to the plan in effect while a downgrade is pending = keep the plan; to a higher one, the
    pending downgrade is undone first so the proration starts from the plan actually paid for this
    period. A past-due org pays what it owes first (409 SUBSCRIPTION_PAST_DUE)."""
    price_id = price_id_for_tier(plan_tier)
    sub = _live_or_conflict(organization)
    if sub.status == "past_due":
        raise Conflict("the subscription is past due: pay the open invoice before changing plans",
                       code="SUBSCRIPTION_PAST_DUE",
                       extra={"planTier": sub.plan_tier, "hostedInvoiceUrl": _open_invoice_url(sub) or None})
    if sub.pending_plan_tier and plan_tier == sub.plan_tier:
        return subscription_downgrade_cancel(organization=organization, now=now)
    if PLANS[plan_tier].rank <= PLANS[sub.plan_tier].rank:
        raise InvalidRequest(f"{plan_tier} is not an upgrade from {sub.plan_tier}; use "
                             "/api/billing/subscription/downgrade (takes effect at the period end)",
                             code="NOT_AN_UPGRADE")
    if sub.pending_update_plan_tier and sub.pending_update_expires_at and sub.pending_update_expires_at > now:
        # One upgrade waits for its payment: pay it (the link) or let it expire; asking again would make
        # Stripe invoice a second proration for the same change.
        raise Conflict(f"an upgrade to {PLANS[sub.pending_update_plan_tier].name} is waiting for its payment; pay "
                       "its invoice or let it expire first", code="UPGRADE_PENDING",
                       extra={"planTier": sub.plan_tier, "pendingPlanTier": sub.pending_update_plan_tier,
                              "hostedInvoiceUrl": _open_invoice_url(sub) or None})
    undone_downgrade = sub.pending_plan_tier
    if undone_downgrade:  # the proration must start from the plan paid for this period, not the lower price
        sub = subscription_downgrade_cancel(organization=organization, now=now)
    _no_transaction("subscription_upgrade")
    snap, pending = stripe_gateway.subscription_upgrade_price(
        subscription_id=sub.stripe_subscription_id, price_id=price_id,
        idempotency_key=_plan_change_key(sub, kind="upgrade", to_price_id=price_id))
    synced = subscription_sync(stripe_subscription=snap, now=now)
    if pending is None:
        if synced.cancel_at_period_end:  # upgraded and paid: the org stays (as a plan change always did)
            synced = subscription_sync(stripe_subscription=stripe_gateway.subscription_resume(
                subscription_id=synced.stripe_subscription_id,
                idempotency_key=f"resume:{synced.stripe_subscription_id}:{_row_state(synced)}"), now=now)
        return synced
    logger.info("org %s upgrade %s -> %s pending payment (%s, invoice %s)", organization.pk, synced.plan_tier,
                plan_tier, pending.code, pending.invoice_id)
    hint = ("finish the payment on the invoice page" if pending.code == "AUTHENTICATION_REQUIRED"
            else "pay the invoice with another card")
    # Nothing else changes meanwhile, and what did is said: a scheduled cancel stays scheduled; a
    # scheduled downgrade had to be undone for the proration (Stripe allows no other change while
    # the upgrade waits).
    also = ""
    if synced.cancel_at_period_end and synced.current_period_end:
        also = f" Your subscription still ends on {synced.current_period_end:%b %-d, %Y}."
    if undone_downgrade:
        also += (f" Your scheduled change to {PLANS[undone_downgrade].name} was canceled; schedule it again if "
                 "you still want it.")
    raise UpgradeNotPaid(
        f"Upgrade to {PLANS[plan_tier].name} not done: {pending.message.rstrip('.')}. You stay on "
        f"{PLANS[synced.plan_tier].name}; {hint} to complete it.{also}", code=pending.code,
        extra={"planTier": synced.plan_tier, "pendingPlanTier": plan_tier,
               "hostedInvoiceUrl": pending.hosted_invoice_url or None,
               "amountDueCents": pending.amount_due_cents,
               "expiresAt": stripe_ts(pending.expires_at).isoformat() if pending.expires_at else None,
               "cancelAtPeriodEnd": synced.cancel_at_period_end,
               "canceledDowngradePlanTier": undone_downgrade or None})


def _open_invoice_url(sub: Subscription) -> str:
    return (Invoice.objects.filter(subscription=sub, status=InvoiceStatus.OPEN).order_by("-created_at")
            .values_list("hosted_invoice_url", flat=True).first() or "")


def subscription_downgrade(*, organization, plan_tier: str, now: dt.datetime) -> Subscription:
    """Schedule a lower paid plan for the end of the current period (DESIGN: "Downgrade: at period
    end"). Stripe's price is switched now with proration_behavior=none: nothing is refunded or
    charged now, and the next renewal invoices the lower price. subscription_sync sees a lower price
    within the same period and keeps the current allowances, recording `pending_plan_tier`; the next
    period (renewal webhook) applies the lower plan. Asking for the plan in effect = keep the plan.
    Also clears a pending cancel-at-period-end (the org stays subscribed, on the lower plan)."""
    price_id = price_id_for_tier(plan_tier)
    sub = _live_or_conflict(organization)
    if plan_tier == sub.plan_tier:
        return subscription_downgrade_cancel(organization=organization, now=now)
    if PLANS[plan_tier].rank > PLANS[sub.plan_tier].rank:
        raise InvalidRequest(f"{plan_tier} is not a downgrade from {sub.plan_tier}; use the upgrade endpoint",
                             code="NOT_A_DOWNGRADE")
    if sub.pending_plan_tier == plan_tier and not sub.cancel_at_period_end:
        return sub  # already scheduled (double click)
    sub = _price_change(sub, kind="downgrade", price_id=price_id, proration_behavior="none", now=now)
    logger.info("org %s downgrade %s -> %s scheduled for %s", organization.pk, sub.plan_tier,
                sub.pending_plan_tier, sub.current_period_end)
    return sub


def subscription_downgrade_cancel(*, organization, now: dt.datetime) -> Subscription:
    """Keep the current plan: undo a pending downgrade (Stripe's price back to the plan in effect,
    proration_behavior=none, so nothing is charged). No pending downgrade: nothing to do."""
    sub = _live_or_conflict(organization)
    if not sub.pending_plan_tier:
        return sub
    return _price_change(sub, kind="keep", price_id=price_id_for_tier(sub.plan_tier), proration_behavior="none",
                         now=now)


def subscription_cancel(*, organization, now: dt.datetime, at_period_end: bool = True) -> Subscription:
    """Cancel at the end of the period (default; the plan keeps working until then) or now."""
    sub = _live_or_conflict(organization)
    _no_transaction("subscription_cancel")
    if at_period_end and sub.cancel_at_period_end:
        return sub
    snap = stripe_gateway.subscription_cancel(
        subscription_id=sub.stripe_subscription_id, at_period_end=at_period_end,
        # Keyed on the row's state like plan changes: a double click / retry replays one request, but a
        # cancel after the previous one was undone (downgrade, portal) must reach Stripe again, not replay
        # the first answer from Stripe's 24 h idempotency cache (the org would renew while told it ends).
        idempotency_key=(f"cancel:{sub.stripe_subscription_id}:{'period_end' if at_period_end else 'now'}:"
                         f"{_row_state(sub)}"))
    return subscription_sync(stripe_subscription=snap, now=now)


MAX_TRIAL_EXTENSION_DAYS = 30


def subscription_trial_extend(*, subscription: Subscription, days: int, now: dt.datetime) -> Subscription:
    """Staff: push a trialing subscription's trial end `days` (1..30) later in Stripe (no proration),
    then apply Stripe's answer with subscription_sync (org trial end, balance period end). Called
    outside any transaction; the idempotency key is derived from the row and the target end, so a
    retried request cannot extend twice."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TRIAL_EXTENSION_DAYS:
        raise InvalidRequest(f"days must be 1..{MAX_TRIAL_EXTENSION_DAYS}", code="INVALID_TRIAL_EXTENSION")
    if subscription.status != "trialing" or subscription.trial_end is None:
        raise Conflict(f"subscription {subscription.stripe_subscription_id} is not trialing ({subscription.status})",
                       code="NOT_TRIALING")
    _no_transaction("subscription_trial_extend")
    new_end = max(subscription.trial_end, now) + dt.timedelta(days=days)
    trial_end = int(new_end.timestamp())
    snap = stripe_gateway.subscription_extend_trial(
        subscription_id=subscription.stripe_subscription_id, trial_end=trial_end,
        idempotency_key=f"extend_trial:{subscription.stripe_subscription_id}:{trial_end}")
    logger.info("trial of %s extended by %s days to %s", subscription.stripe_subscription_id, days, new_end)
    return subscription_sync(stripe_subscription=snap, now=now)


@dataclass(frozen=True)
class PlanStatus:
    """What the dashboard and API show: the org (its plan, status and trial) and its Stripe
    subscription (the live one, else the latest; None when it never had one)."""
    organization: Organization
    subscription: Subscription | None


def subscription_status(*, organization: Organization) -> PlanStatus:
    return PlanStatus(organization=organization, subscription=subscription_shown(organization=organization))
