"""Billing reads (typed). `balance_summary` is what GET /api/billing/usage serialises and what the dashboard
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
from .services.balance_rules import usage_warning


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
    warning = usage_warning(used=used, included=included)
    if warning == Warning_.P100 and topup_in_use:
        return Warning_.TOPUP
    return warning


@dataclass(frozen=True)
class TierUsage:
    """One tier's allowance this period (actions) and the warning its use is worth."""
    tier: str
    included: int
    used: int
    remaining: int                   # max(included - used, 0)
    overage: int                     # actions past the allowance this period (buffer)
    overage_allowed: int             # buffer actions this period
    credit_cost: Decimal             # credits per action of this tier
    warning: str | None              # Warning_ value, or None


@dataclass(frozen=True)
class AutoTopupSettings:
    enabled: bool
    threshold: Decimal               # credits
    packs: int
    monthly_cap_packs: int


@dataclass(frozen=True)
class BalanceSummary:
    """The org's balance as of `now` (GET /api/billing/usage and the dashboard). Typed: the API
    shape (camelCase, decimal strings) is made by the view (billing.api_shapes.balance_summary_json)."""
    organization_id: Any
    plan: str
    period_start: dt.datetime
    period_end: dt.datetime
    tiers: list[TierUsage]           # in TIERS order
    topup_purchased: Decimal
    topup_used: Decimal
    topup_remaining: Decimal
    overage_credits_owed: Decimal
    total_remaining: Decimal         # plan remainder at tier rates + top-up: the auto top-up figure
    spendable_credits: Decimal       # top-up credits left: what any tier can still spend
    next: list[TierStatus]           # in TIERS order: where each tier's next action goes
    auto_topup: AutoTopupSettings


def auto_topup_settings(balance: CreditBalance) -> AutoTopupSettings:
    return AutoTopupSettings(enabled=balance.auto_topup_enabled, threshold=balance.auto_topup_threshold,
                             packs=balance.auto_topup_packs, monthly_cap_packs=balance.auto_topup_monthly_cap_packs)


def balance_summary(*, organization: Organization, now: dt.datetime, status: BalanceStatus | None = None
                    ) -> BalanceSummary:
    """The balance summary (reads only). `status`: a balance_status already read (the dashboard reads once)."""
    status = status or balance_status(organization_id=organization.pk, now=now)
    balance = status.balance
    topup_left = balance.topup_remaining
    tiers = []
    for t in TIERS:
        included, used, overage = balance.included(t), balance.used(t), balance.overage(t)
        tiers.append(TierUsage(
            tier=t, included=included, used=used, remaining=max(included - used, 0), overage=overage,
            overage_allowed=buffer_actions(balance, t), credit_cost=TIER_CREDIT_COST[t],
            warning=_tier_warning(used=used, included=included, overage=overage,
                                  topup_in_use=topup_left >= TIER_CREDIT_COST[t])))
    return BalanceSummary(
        organization_id=organization.pk, plan=balance.plan_tier, period_start=balance.period_start,
        period_end=balance.period_end, tiers=tiers, topup_purchased=balance.topup_purchased,
        topup_used=balance.topup_used, topup_remaining=topup_left,
        overage_credits_owed=balance.overage_credits_owed, total_remaining=balance_total_remaining(balance),
        spendable_credits=status.spendable_credits, next=list(status.tiers), auto_topup=auto_topup_settings(balance))
