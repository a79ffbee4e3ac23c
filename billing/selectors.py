"""Billing reads. `balance_summary` is the body of GET /api/billing/usage and what the dashboard
renders; it never writes (a missing balance or an ended free period is computed in memory)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from organizations.models import Organization

from .plans import TIER_CREDIT_COST, TIERS
from .services.balance import Warning_, balance_read, balance_total_remaining, buffer_actions


def _tier_warning(*, used: int, included: int, overage: int, topup_in_use: bool) -> str | None:
    if overage > 0:
        return Warning_.BUFFER
    if included and used >= included:
        return Warning_.TOPUP if topup_in_use else Warning_.P100
    if included and used * 100 >= 80 * included:
        return Warning_.P80
    return None


def balance_summary(*, organization: Organization, now: dt.datetime) -> dict[str, Any]:
    """camelCase dict: orgId, plan, period{start,end}, tiers{t:{included,used,remaining,overage,
    overageAllowed,creditCost}}, topupCredits{purchased,used,remaining}, overageCreditsOwed,
    totalRemaining, warnings{t: str|None}, autoTopup{...}. Credits are decimal strings."""
    balance = balance_read(organization_id=organization.pk, now=now)
    topup_left = balance.topup_remaining
    tiers: dict[str, Any] = {}
    warnings: dict[str, str | None] = {}
    for t in TIERS:
        included, used, overage = balance.included(t), balance.used(t), balance.overage(t)
        tiers[t] = {
            "included": included,
            "used": used,
            "remaining": max(included - used, 0),
            "overage": overage,
            "overageAllowed": buffer_actions(balance, t),
            "creditCost": str(TIER_CREDIT_COST[t]),
        }
        warnings[t] = _tier_warning(used=used, included=included, overage=overage,
                                    topup_in_use=topup_left >= TIER_CREDIT_COST[t])
    return {
        "orgId": str(organization.pk),
        "plan": balance.plan_tier,
        "period": {"start": balance.period_start.isoformat(), "end": balance.period_end.isoformat()},
        "tiers": tiers,
        "topupCredits": {
            "purchased": str(balance.topup_purchased),
            "used": str(balance.topup_used),
            "remaining": str(topup_left),
        },
        "overageCreditsOwed": str(balance.overage_credits_owed),
        "totalRemaining": str(balance_total_remaining(balance)),
        "warnings": warnings,
        "autoTopup": {
            "enabled": balance.auto_topup_enabled,
            "threshold": str(balance.auto_topup_threshold),
            "packs": balance.auto_topup_packs,
            "monthlyCapPacks": balance.auto_topup_monthly_cap_packs,
        },
    }
