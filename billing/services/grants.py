"""Staff credit grants: free credits added by a staff member, with a reason (the admin action).

A grant is a CreditPurchase of kind `grant` (method none, 0 cents, status succeeded), written in
the same transaction as the balance credit (billing.services.balance.balance_add_topup_credits),
so the fact and the cache never disagree and reconcile counts grants like paid top-ups.
"""
from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction

from ..errors import BillingError
from ..logging import log_money
from ..models import CreditPurchase, PurchaseKind, PurchaseMethod, PurchaseStatus
from .balance import balance_add_topup_credits

logger = logging.getLogger("billing.grants")

#: Upper bound of one grant (a typo guard: 1,000,000 credits is $40,000 of packs).
MAX_GRANT_CREDITS = Decimal("1000000.00")


def credit_grant_create(*, organization_id: Any, credits: Decimal, reason: str, granted_by: Any,
                        now: dt.datetime) -> CreditPurchase:
    """Grant `credits` to the org: one `grant` purchase row (who, why) + the balance credit, one
    transaction. Raises BillingError INVALID_AMOUNT / REASON_REQUIRED."""
    try:
        amount = Decimal(credits)
    except (InvalidOperation, TypeError, ValueError):
        raise BillingError("credits must be a number", code="INVALID_AMOUNT") from None
    if isinstance(credits, float) or amount <= 0 or amount > MAX_GRANT_CREDITS \
            or amount != amount.quantize(Decimal("0.01")):
        raise BillingError(f"credits must be > 0, <= {MAX_GRANT_CREDITS}, with at most 2 decimals",
                           code="INVALID_AMOUNT")
    amount = amount.quantize(Decimal("0.01"))
    reason = (reason or "").strip()
    if not reason:
        raise BillingError("a reason is required for a credit grant", code="REASON_REQUIRED")
    with transaction.atomic():
        purchase = CreditPurchase(
            organization_id=organization_id, kind=PurchaseKind.GRANT, method=PurchaseMethod.NONE, packs=0,
            credits=amount, amount_cents=0, status=PurchaseStatus.SUCCEEDED, created_by=granted_by, reason=reason,
            created_at=now, completed_at=now, credits_applied_at=now,
        )
        purchase.full_clean()
        # Balance first (its lock, then the purchase row: the top-ups' lock order); the row records
        # how much of the grant settled owed overage (reconcile rebuilds the balance from it).
        result = balance_add_topup_credits(organization_id=organization_id, amount=amount, now=now)
        purchase.overage_settled = result.settled_overage
        purchase.save(force_insert=True)
    log_money("credits.granted", org=organization_id, purchase=purchase.pk, credits=amount,
              settled_overage=result.settled_overage, topup_remaining=result.balance.topup_remaining,
              by=getattr(granted_by, "email", None) or getattr(granted_by, "username", None), reason=reason)
    return purchase
