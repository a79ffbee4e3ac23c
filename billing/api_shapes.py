"""The JSON shapes of billing's API (camelCase, credits as decimal strings, ISO datetimes): the only
place typed results become the contract in DESIGN's "Interfaces". Views call these; services and
selectors never build them."""
from __future__ import annotations

from typing import Any

from .models import CreditPurchase, PurchaseStatus
from .selectors import AutoTopupSettings, BalanceSummary
from .services.topup_purchases import topup_finish_url
from .stripe_payloads import iso


def auto_topup_json(settings: AutoTopupSettings) -> dict[str, Any]:
    return {"enabled": settings.enabled, "threshold": str(settings.threshold), "packs": settings.packs,
            "monthlyCapPacks": settings.monthly_cap_packs}


def balance_summary_json(summary: BalanceSummary) -> dict[str, Any]:
    """orgId, plan, period{start,end}, tiers{t:{included,used,remaining,overage,overageAllowed,creditCost}},
    topupCredits{purchased,used,remaining}, overageCreditsOwed, totalRemaining, spendableCredits,
    next{t:{paidFrom,blocked,blockedSince,bufferLeft}}, warnings{t: str|None}, autoTopup{...}."""
    return {
        "orgId": str(summary.organization_id),
        "plan": summary.plan,
        "period": {"start": summary.period_start.isoformat(), "end": summary.period_end.isoformat()},
        "tiers": {t.tier: {"included": t.included, "used": t.used, "remaining": t.remaining, "overage": t.overage,
                           "overageAllowed": t.overage_allowed, "creditCost": str(t.credit_cost)}
                  for t in summary.tiers},
        "topupCredits": {"purchased": str(summary.topup_purchased), "used": str(summary.topup_used),
                         "remaining": str(summary.topup_remaining)},
        "overageCreditsOwed": str(summary.overage_credits_owed),
        "totalRemaining": str(summary.total_remaining),
        "spendableCredits": str(summary.spendable_credits),
        "next": {s.tier: {"paidFrom": s.next_paid_from, "blocked": s.blocked, "blockedSince": iso(s.blocked_since),
                          "bufferLeft": s.buffer_left} for s in summary.next},
        "warnings": {t.tier: t.warning for t in summary.tiers},
        "autoTopup": auto_topup_json(summary.auto_topup),
    }


def _finish_url(purchase: CreditPurchase) -> str | None:
    return topup_finish_url(purchase=purchase) if purchase.status == PurchaseStatus.REQUIRES_ACTION else None


def purchase_json(purchase: CreditPurchase) -> dict[str, Any]:
    """The outcome of a top-up request (POST /api/billing/credits/topup with useSavedCard)."""
    return {"purchaseId": purchase.pk, "status": purchase.status, "packs": purchase.packs,
            "credits": str(purchase.credits), "amountCents": purchase.amount_cents,
            "failureCode": purchase.failure_code or None, "failureMessage": purchase.failure_message or None,
            "finishUrl": _finish_url(purchase)}


def purchase_history_json(purchase: CreditPurchase) -> dict[str, Any]:
    """One row of GET /api/billing/credits/history."""
    return {
        "id": purchase.pk, "kind": purchase.kind, "method": purchase.method, "packs": purchase.packs,
        "credits": str(purchase.credits), "amountCents": purchase.amount_cents, "currency": purchase.currency,
        "status": purchase.status, "failureCode": purchase.failure_code or None,
        "failureMessage": purchase.failure_message or None, "createdAt": purchase.created_at.isoformat(),
        "completedAt": iso(purchase.completed_at), "creditsAppliedAt": iso(purchase.credits_applied_at),
        "finishUrl": _finish_url(purchase),
    }
