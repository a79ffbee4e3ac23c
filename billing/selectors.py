"""Billing reads. `balance_summary` is the body of GET /api/billing/usage and what the dashboard
renders; it never writes (a missing balance or an ended free period is computed in memory)."""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from organizations.models import Organization

from .models import CreditBalance
from .plans import TIER_CREDIT_COST, TIERS, TOPUP_PACK_CREDITS
from .services.balance import (
    Warning_,
    _next_plan,  # the 402's suggestedPlan: one rule for both
    balance_read,
    balance_total_remaining,
    buffer_actions,
    next_paid_from,
)


@dataclass(frozen=True)
class TierStatus:
    """What happens to the next action of one tier, and how much of each source is left."""
    tier: str
    next_paid_from: str | None       # "plan" | "credits" | "overage"; None: it is refused (402), blocked
    plan_left: int                   # plan actions left this period
    credit_actions: int              # actions of this tier the spendable credits pay for
    buffer_left: int                 # overage (buffer) actions left this period
    blocked_since: dt.datetime | None  # first refusal this period, while blocked (None: none yet)
    packs_to_unblock: int            # top-up packs that unblock it (overage owed is settled first); 0 if not blocked

    @property
    def blocked(self) -> bool:
        return self.next_paid_from is None


@dataclass(frozen=True)
class BalanceStatus:
    balance: CreditBalance
    tiers: list[TierStatus]          # in TIERS order
    spendable_credits: Decimal       # top-up credits left: the only credits, usable by any tier's next
                                     # action (another tier's plan allowance is not credits)
    suggested_plan: str | None       # the next plan up (None on the highest)


def tier_status(balance: CreditBalance, tier: str) -> TierStatus:
    cost = TIER_CREDIT_COST[tier]
    paid_from = next_paid_from(balance, tier)
    packs = 0
    if paid_from is None:  # a purchase settles owed overage first: what must be bought to pay one action
        short = cost + balance.overage_credits_owed - balance.topup_remaining
        packs = max(1, math.ceil(short / TOPUP_PACK_CREDITS))
    return TierStatus(
        tier=tier, next_paid_from=paid_from, plan_left=balance.plan_remaining(tier),
        credit_actions=int(balance.topup_remaining // cost),
        buffer_left=max(buffer_actions(balance, tier) - balance.overage(tier), 0),
        blocked_since=balance.blocked_at(tier) if paid_from is None else None, packs_to_unblock=packs)


def balance_status(*, organization_id: Any, now: dt.datetime) -> BalanceStatus:
    """Per tier, where the next action goes (plan / credits / buffer / blocked since), and the
    credits that can still be spent. Reads only (like balance_summary)."""
    balance = balance_read(organization_id=organization_id, now=now)
    return BalanceStatus(balance=balance, tiers=[tier_status(balance, t) for t in TIERS],
                         spendable_credits=balance.topup_remaining, suggested_plan=_next_plan(balance.plan_tier))


def _tier_warning(*, used: int, included: int, overage: int, topup_in_use: bool) -> str | None:
    if overage > 0:
        return Warning_.BUFFER
    if included and used >= included:
        return Warning_.TOPUP if topup_in_use else Warning_.P100
    if included and used * 100 >= 80 * included:
        return Warning_.P80
    return None


def balance_summary(*, organization: Organization, now: dt.datetime, status: BalanceStatus | None = None
                    ) -> dict[str, Any]:
    """camelCase dict: orgId, plan, period{start,end}, tiers{t:{included,used,remaining,overage,
    overageAllowed,creditCost}}, topupCredits{purchased,used,remaining}, overageCreditsOwed,
    totalRemaining (plan remainder at tier rates + top-up: the auto top-up figure), spendableCredits
    (top-up credits left: what any tier can still spend), next{t:{paidFrom,blocked,blockedSince,
    bufferLeft}}, warnings{t: str|None}, autoTopup{...}. Credits are decimal strings.
    `status`: a balance_status already read (the dashboard reads once)."""
    status = status or balance_status(organization_id=organization.pk, now=now)
    balance = status.balance
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
        "spendableCredits": str(status.spendable_credits),
        "next": {s.tier: {"paidFrom": s.next_paid_from, "blocked": s.blocked,
                          "blockedSince": s.blocked_since.isoformat() if s.blocked_since else None,
                          "bufferLeft": s.buffer_left} for s in status.tiers},
        "warnings": warnings,
        "autoTopup": {
            "enabled": balance.auto_topup_enabled,
            "threshold": str(balance.auto_topup_threshold),
            "packs": balance.auto_topup_packs,
            "monthlyCapPacks": balance.auto_topup_monthly_cap_packs,
        },
    }
