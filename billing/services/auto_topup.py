"""Auto top-up: the org's settings (bounds, audit), the trigger on the engine's hot path, the queueing of
the off-session charge, and the failure streak that switches it off. The purchase itself (intent row,
Stripe call, credits landing) is billing.services.topup_purchases.

Rules kept here:
- At most one open auto top-up per org: UNIQUE (organization, open_slot) in the database.
- Never more than `auto_topup_monthly_cap_packs` packs a calendar month (UTC).
- AUTO_TOPUP_FAILURES_TO_DISABLE failures in a row (since the last success / settings change) switch it off.
"""
from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.db.models.functions import Coalesce

from organizations.models import Organization

from .. import enqueue
from ..errors import BillingError
from ..logging import log_money
from ..models import (
    OPEN_PURCHASE_STATUSES,
    AutoTopupSettingsChange,
    CreditBalance,
    CreditPurchase,
    PurchaseKind,
    PurchaseMethod,
    PurchaseStatus,
)
from ..notifications import notify_org_admins
from ..plans import CURRENCY, credits as to_credits, topup_price
from .balance import balance_for_update, balance_total_remaining

logger = logging.getLogger("billing.topups")

# --- Limits (the auto top-up bounds are part of the product contract) ----------------------------
AUTO_TOPUP_THRESHOLD_MIN = Decimal("10")
AUTO_TOPUP_THRESHOLD_MAX = Decimal("500")
AUTO_TOPUP_PACKS_MIN = 1
AUTO_TOPUP_PACKS_MAX = 10
AUTO_TOPUP_CAP_MAX = 100
#: Failed auto top-ups in a row (since the last success / settings change) that switch it off.
AUTO_TOPUP_FAILURES_TO_DISABLE = 3
#: After a failed auto top-up, the trigger waits this long before trying again (no retry storm
#: on every action while the card keeps failing).
AUTO_TOPUP_RETRY_AFTER = dt.timedelta(hours=1)


def _month_start(now: dt.datetime) -> dt.datetime:
    now = now.astimezone(dt.timezone.utc)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)



def billing_page_url(org: Organization, **params: str) -> str:
    """The org's billing dashboard (absolute, for emails and Stripe's return URLs)."""
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{settings.APP_BASE_URL}/settings/billing?org={org.slug}{extra}"


def _balance_write(balance: CreditBalance, *, now: dt.datetime, **fields: Any) -> None:
    """Write auto top-up settings on a balance row the caller has locked (bumps the engine's version)."""
    CreditBalance.objects.filter(pk=balance.pk).update(**fields, version=F("version") + 1, updated_at=now)
    for name, value in fields.items():
        setattr(balance, name, value)
    balance.version += 1
    balance.updated_at = now


def auto_topup_failure_streak(*, organization_id, now: dt.datetime) -> int:
    """Failed / auth-required / abandoned auto top-ups in a row, newest first, since the last success
    and since the last settings change (re-enabling starts a new count)."""
    since = AutoTopupSettingsChange.objects.filter(organization_id=organization_id).order_by(
        "-created_at", "-id").values_list("created_at", flat=True).first()
    qs = CreditPurchase.objects.filter(organization_id=organization_id, kind=PurchaseKind.AUTO_TOPUP).exclude(
        status__in=[PurchaseStatus.PENDING, PurchaseStatus.STARTED])
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    streak = 0
    for status in qs.order_by("-created_at", "-id").values_list("status", flat=True)[:AUTO_TOPUP_FAILURES_TO_DISABLE]:
        if status == PurchaseStatus.SUCCEEDED:
            break
        streak += 1
    return streak


def auto_topup_maybe_disable(*, balance: CreditBalance, now: dt.datetime, reason: str = "") -> bool:
    """Switch auto top-up off after AUTO_TOPUP_FAILURES_TO_DISABLE failures in a row. Caller holds the
    balance lock."""
    if not balance.auto_topup_enabled:
        return False
    streak = auto_topup_failure_streak(organization_id=balance.organization_id, now=now)
    if streak < AUTO_TOPUP_FAILURES_TO_DISABLE:
        return False
    _balance_write(balance, now=now, auto_topup_enabled=False)
    AutoTopupSettingsChange.objects.create(
        organization_id=balance.organization_id, changed_by=None, enabled=False,
        threshold=balance.auto_topup_threshold, packs=balance.auto_topup_packs,
        monthly_cap_packs=balance.auto_topup_monthly_cap_packs, reason="three_failures", created_at=now)
    notify_org_admins(organization_id=balance.organization_id, kind="topup_auto_disabled", context={
        "failures": streak, "reason": reason,
        "billing_url": billing_page_url(Organization.objects.get(pk=balance.organization_id))})
    log_money("topup.auto_disabled", org=balance.organization_id, failures=streak)
    logger.warning("auto top-up switched off for org %s after %s failures in a row", balance.organization_id, streak)
    return True


def topup_maybe_trigger(*, balance: CreditBalance, now: dt.datetime) -> CreditPurchase | None:
    """Called by the engine inside the action's transaction, with `balance` locked and already
    charged. Cheap: a threshold comparison in memory; only below the threshold does it read (one
    indexed query for the org's latest auto purchase, one for this month's packs) and, when a
    purchase is due, INSERT one intent row and queue the charge task on commit."""
    if not balance.auto_topup_enabled:
        return None
    if balance_total_remaining(balance) >= balance.auto_topup_threshold:
        return None
    org_id = balance.organization_id
    latest = (CreditPurchase.objects.filter(organization_id=org_id, kind=PurchaseKind.AUTO_TOPUP)
              .order_by("-created_at", "-id").values("status", "completed_at").first())
    if latest is not None:
        if latest["status"] in OPEN_PURCHASE_STATUSES:
            return None  # one in flight already
        if (latest["status"] == PurchaseStatus.FAILED and latest["completed_at"] is not None
                and latest["completed_at"] > now - AUTO_TOPUP_RETRY_AFTER):
            return None
    used = _auto_packs_this_month(organization_id=org_id, now=now)
    packs = min(balance.auto_topup_packs, balance.auto_topup_monthly_cap_packs - used)
    if packs <= 0:
        logger.info("auto top-up for org %s skipped: monthly cap of %s packs reached", org_id,
                    balance.auto_topup_monthly_cap_packs)
        return None
    credits_amount, amount_cents = topup_price(packs)
    purchase = CreditPurchase(
        organization_id=org_id, kind=PurchaseKind.AUTO_TOPUP, method=PurchaseMethod.SAVED_CARD, packs=packs,
        credits=credits_amount, amount_cents=amount_cents, currency=CURRENCY, status=PurchaseStatus.PENDING,
        open_slot=True, created_at=now)
    try:
        with transaction.atomic():  # savepoint: a lost race must not poison the action's transaction
            purchase.save(force_insert=True)
    except IntegrityError:
        logger.info("auto top-up for org %s already open (unique slot)", org_id)
        return None
    _enqueue_charge_on_commit(purchase_id=purchase.pk)
    logger.info("auto top-up %s queued for org %s: %s packs", purchase.pk, org_id, packs)
    return purchase


def _auto_packs_this_month(*, organization_id, now: dt.datetime) -> int:
    """Packs of auto top-ups this calendar month (UTC) that bought or may buy credits."""
    return CreditPurchase.objects.filter(
        organization_id=organization_id, kind=PurchaseKind.AUTO_TOPUP, created_at__gte=_month_start(now),
        status__in=[*OPEN_PURCHASE_STATUSES, PurchaseStatus.SUCCEEDED],
    ).aggregate(n=Coalesce(Sum("packs"), 0))["n"]


def enqueue_charge(purchase_id: int) -> bool:
    """Send the charge task now. Never raises: a broker outage is logged and the sweeper re-queues."""
    try:
        enqueue.topup_charge(purchase_id=purchase_id)
        return True
    except Exception:  # noqa: BLE001 - the sweeper is the retry
        logger.exception("could not queue top-up %s; the sweeper will re-queue it", purchase_id)
        return False


def _enqueue_charge_on_commit(*, purchase_id: int) -> None:
    transaction.on_commit(lambda: enqueue_charge(purchase_id))


def auto_topup_threshold_check(threshold: Decimal | int) -> None:
    if not (AUTO_TOPUP_THRESHOLD_MIN <= threshold <= AUTO_TOPUP_THRESHOLD_MAX):
        raise BillingError(f"threshold must be between {AUTO_TOPUP_THRESHOLD_MIN} and {AUTO_TOPUP_THRESHOLD_MAX} "
                           "credits", code="INVALID_AUTO_TOPUP_THRESHOLD")


def auto_topup_packs_check(packs: int) -> None:
    if not (AUTO_TOPUP_PACKS_MIN <= packs <= AUTO_TOPUP_PACKS_MAX):
        raise BillingError(f"packs must be between {AUTO_TOPUP_PACKS_MIN} and {AUTO_TOPUP_PACKS_MAX}",
                           code="INVALID_AUTO_TOPUP_PACKS")


def auto_topup_cap_check(monthly_cap_packs: int, *, packs: int) -> None:
    if monthly_cap_packs < packs:
        raise BillingError("the monthly cap must be at least the packs per top-up", code="INVALID_AUTO_TOPUP_CAP")
    if monthly_cap_packs > AUTO_TOPUP_CAP_MAX:
        raise BillingError(f"the monthly cap must be at most {AUTO_TOPUP_CAP_MAX} packs", code="INVALID_AUTO_TOPUP_CAP")


def auto_topup_settings_validate(*, threshold: Decimal | int, packs: int, monthly_cap_packs: int
                                 ) -> tuple[Decimal, int, int]:
    """Check the settings' bounds (browser input was parsed, and checked field by field with these same
    checks, by billing.forms.AutoTopupSettingsForm); BillingError with a stable code on the first bad field."""
    auto_topup_threshold_check(threshold)
    auto_topup_packs_check(packs)
    auto_topup_cap_check(monthly_cap_packs, packs=packs)
    return to_credits(threshold), packs, monthly_cap_packs


def auto_topup_settings_update(*, organization_id, enabled: bool, threshold: Decimal | int, packs: int,
                               monthly_cap_packs: int, user=None, now: dt.datetime) -> CreditBalance:
    """Validate and save the org's auto top-up settings (audited). Enabling needs a Stripe customer
    (a saved card); if the org is already below the new threshold, a top-up is triggered at once."""
    if not isinstance(enabled, bool):
        raise BillingError("enabled must be true or false", code="INVALID_REQUEST")
    t, p, cap = auto_topup_settings_validate(threshold=threshold, packs=packs, monthly_cap_packs=monthly_cap_packs)
    org = Organization.objects.get(pk=organization_id)
    if enabled and not org.stripe_customer_id:
        raise BillingError("add a card first (buy credits or subscribe once) to use auto top-up",
                           code="NO_PAYMENT_METHOD", http_status=409)
    with transaction.atomic():
        balance = balance_for_update(organization_id=organization_id, now=now)
        _balance_write(balance, now=now, auto_topup_enabled=enabled, auto_topup_threshold=t, auto_topup_packs=p,
                       auto_topup_monthly_cap_packs=cap)
        AutoTopupSettingsChange.objects.create(
            organization_id=organization_id, changed_by=user if getattr(user, "pk", None) else None,
            enabled=enabled, threshold=t, packs=p, monthly_cap_packs=cap, reason="admin", created_at=now)
        if enabled:
            topup_maybe_trigger(balance=balance, now=now)
    logger.info("auto top-up settings for org %s: enabled=%s threshold=%s packs=%s cap=%s",
                organization_id, enabled, t, p, cap)
    return balance
