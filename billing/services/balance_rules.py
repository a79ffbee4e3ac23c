"""The credit engine's rules, pure: which bucket pays for an action, what the API warns, which
email is due, what a refusal says. No database, no locks, no SQL: they read a `CreditBalance`
(or plain numbers) and answer. `billing.services.balance` holds the storage (row lock, SQL) and
applies these answers to the locked row; `billing.services.charge` is the unit of work the usage
API charges through. Tested through both, and directly where a rule is arithmetic.

Rules (DESIGN "Rules of the credit engine"), for an action of tier T costing c(T):
  1. used[T] < included[T]            -> used[T] += 1, paid from the plan (0 credits; the last
                                         included action is free of credits too).
  2. top-up remaining >= c(T)         -> topup_used += c(T), paid from credits.
  3. overage[T] < ceil(BUFFER% * included[T])
                                      -> overage[T] += 1, owed += c(T), paid as overage
                                         (BILLING_SOFT_LIMIT_BUFFER=0 is a hard limit).
  4. else                             -> BillingError CREDITS_EXHAUSTED (HTTP 402), nothing written.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from dateutil.relativedelta import relativedelta
from django.conf import settings

from ..errors import BillingError
from ..models import CreditBalance, PaidFrom
from ..plans import PLANS, TIER_CREDIT_COST, TIERS, soft_limit_buffer

ZERO = Decimal("0.00")

#: The share of a tier's allowance whose use earns the "80percent" warning and email.
WARN_AT_PERCENT = 80


class Warning_:  # noqa: N801 - the API's warning values, not Python's Warning
    P80 = "80percent"
    P100 = "100percent"
    TOPUP = "using_topup_credits"
    BUFFER = "buffer"


#: Email kinds queued through billing.notifications (one per tier per cooldown).
EMAIL_USAGE_80 = "usage_80"
EMAIL_USAGE_100 = "usage_100"
EMAIL_OVERAGE = "overage"
EMAIL_TIER_BLOCKED = "tier_blocked"
#: The balance column that remembers when each kind was last emailed for a tier.
EMAIL_FIELD = {EMAIL_USAGE_80: "warned_80_{tier}_at", EMAIL_USAGE_100: "warned_100_{tier}_at",
               EMAIL_OVERAGE: "warned_overage_{tier}_at", EMAIL_TIER_BLOCKED: "warned_blocked_{tier}_at"}
_EMAIL_OF_WARNING = {Warning_.P80: EMAIL_USAGE_80, Warning_.P100: EMAIL_USAGE_100}


@dataclass(frozen=True)
class ChargeResult:
    tier: str
    paid_from: str              # "plan" | "credits" | "overage"
    credits_charged: Decimal    # plan: 0.00; credits: c(T) from top-up; overage: c(T) owed
    warning: str | None         # "80percent" | "100percent" | "using_topup_credits" | "buffer" | None
    balance: CreditBalance      # the balance after this charge (same object for a batch; read promptly)
    remaining: dict[str, int] = field(default_factory=dict)   # plan actions left per tier, after
    topup_remaining: Decimal = ZERO                           # top-up credits left, after


@dataclass(frozen=True)
class CheckResult:
    allowed: bool
    tier: str
    paid_from: str | None       # where the next action of this tier would be paid from
    warning: str | None
    balance: CreditBalance


@dataclass(frozen=True)
class Decision:
    """Where the next action of a tier is paid from, what it costs, what the API says."""
    paid_from: str
    credits: Decimal
    warning: str | None


def validate_tier(tier: Any) -> str:
    if not isinstance(tier, str) or tier not in TIER_CREDIT_COST:
        raise BillingError(f"actionTier must be one of {', '.join(TIERS)}", code="INVALID_ACTION_TIER",
                           http_status=400)
    return tier


def usage_warning(*, used: int, included: int) -> str | None:
    """The plan-allowance warning once `used` of `included` actions are used: "100percent" at the
    allowance, "80percent" from WARN_AT_PERCENT of it, else None (and None without an allowance).
    The one place of this rule: the record API's warning, the emails and the usage summary use it."""
    if included <= 0:
        return None
    if used >= included:
        return Warning_.P100
    if used * 100 >= WARN_AT_PERCENT * included:
        return Warning_.P80
    return None


def usage_email_crossed(*, used_before: int, included: int) -> str | None:
    """The usage email kind (usage_80 / usage_100) due when one plan-paid action takes a tier from
    `used_before` to `used_before + 1`: the warning changed with this action; None otherwise."""
    after = usage_warning(used=used_before + 1, included=included)
    if after is None or after == usage_warning(used=used_before, included=included):
        return None
    return _EMAIL_OF_WARNING[after]


def email_cooled_down(balance: CreditBalance, *, kind: str, tier: str, now: dt.datetime) -> bool:
    """May an email of `kind` for `tier` go out now (none sent within BILLING_WARNING_COOLDOWN_HOURS)?"""
    last = getattr(balance, EMAIL_FIELD[kind].format(tier=tier))
    return last is None or now - last >= dt.timedelta(hours=settings.BILLING_WARNING_COOLDOWN_HOURS)


def buffer_actions(balance: CreditBalance, tier: str) -> int:
    """Overage actions the soft-limit buffer allows this period for `tier`."""
    return soft_limit_buffer(included=balance.included(tier), buffer_percent=settings.BILLING_SOFT_LIMIT_BUFFER)


def decide(balance: CreditBalance, tier: str) -> Decision | None:
    """Where the next action of `tier` is paid from (rules 1-3), or None when refused (rule 4)."""
    used, included = balance.used(tier), balance.included(tier)
    if used < included:
        return Decision(PaidFrom.PLAN, ZERO, usage_warning(used=used + 1, included=included))
    cost = TIER_CREDIT_COST[tier]
    if balance.topup_remaining >= cost:
        return Decision(PaidFrom.CREDITS, cost, Warning_.TOPUP)
    if balance.overage(tier) < buffer_actions(balance, tier):
        return Decision(PaidFrom.OVERAGE, cost, Warning_.BUFFER)
    return None


def next_paid_from(balance: CreditBalance, tier: str) -> str | None:
    """Where the next action of `tier` would be paid from ("plan" | "credits" | "overage"), or None
    when it would be refused (the tier is blocked)."""
    decision = decide(balance, tier)
    return decision.paid_from if decision is not None else None


def balance_total_remaining(balance: CreditBalance) -> Decimal:
    """Plan remainder at tier rates + top-up remainder (what auto top-up compares to its threshold)."""
    plan_part = sum((TIER_CREDIT_COST[t] * balance.plan_remaining(t) for t in TIERS), ZERO)
    return plan_part + balance.topup_remaining


def auto_topup_due(balance: CreditBalance) -> bool:
    """Auto top-up is on and the total remaining fell below its threshold."""
    return balance.auto_topup_enabled and balance_total_remaining(balance) < balance.auto_topup_threshold


def remaining_by_tier(balance: CreditBalance) -> dict[str, int]:
    return {t: balance.plan_remaining(t) for t in TIERS}


def next_plan(plan_tier: str) -> str | None:
    """The next plan up (the 402's suggestedPlan, the dashboard's upgrade), None on the highest."""
    rank = PLANS[plan_tier].rank
    higher = sorted((p for p in PLANS.values() if p.rank > rank), key=lambda p: p.rank)
    return higher[0].tier if higher else None


def credits_exhausted_error(balance: CreditBalance, tier: str) -> BillingError:
    org = balance.organization_id
    base = settings.APP_BASE_URL.rstrip("/")
    return BillingError(
        f"no {tier} actions left: plan allowance, top-up credits and soft-limit buffer are used up",
        code="CREDITS_EXHAUSTED", http_status=402,
        extra={
            "actionTier": tier,
            "creditsRequired": str(TIER_CREDIT_COST[tier]),
            "remainingCredits": remaining_by_tier(balance),
            "topupRemaining": str(balance.topup_remaining),
            "suggestedPlan": next_plan(balance.plan_tier),
            "canTopUp": True,
            "upgradeUrl": f"{base}/settings/billing?org={org}#plans",
            "topUpUrl": f"{base}/settings/billing?org={org}#credits",
        },
    )


def email_context(balance: CreditBalance, *, kind: str, tier: str, now: dt.datetime) -> dict[str, Any]:
    context = {
        "tier": tier, "used": balance.used(tier), "included": balance.included(tier),
        "overage": balance.overage(tier), "topup_remaining": str(balance.topup_remaining),
        "period_end": balance.period_end.isoformat(),
    }
    if kind == EMAIL_TIER_BLOCKED:
        context.update(blocked_at=now.isoformat(), limit=buffer_actions(balance, tier),
                       credit_cost=str(TIER_CREDIT_COST[tier]), owed=str(balance.overage_credits_owed),
                       suggested_plan=next_plan(balance.plan_tier))
    return context


# ---------------------------------------------------------------------------------------------
# Periods and upgrades (date arithmetic).

def free_period(*, anchor: dt.datetime, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The monthly period containing `now`, anchored on `anchor` (the org's creation). Each
    boundary is `anchor + k months` (day clamped, so a 31st anchor gives Feb 28 then Mar 31)."""
    months = max((now.year - anchor.year) * 12 + (now.month - anchor.month), 0)
    start = anchor + relativedelta(months=months)
    while months > 0 and start > now:
        months -= 1
        start = anchor + relativedelta(months=months)
    end = anchor + relativedelta(months=months + 1)
    while end <= now:
        months += 1
        start, end = end, anchor + relativedelta(months=months + 1)
    return start, end


def prorated_included(*, from_plan: str, plan_tier: str, base: dict[str, int], period_start: dt.datetime,
                      period_end: dt.datetime, effective_at: dt.datetime) -> dict[str, int]:
    """The allowances after an upgrade inside a period: `base` (what the period had) plus each tier's
    added allowance (new plan's included - old plan's) prorated by the time left, rounded up — as
    Stripe prorates the price: ceil(added * left / period), in whole seconds."""
    length = max(1, int((period_end - period_start).total_seconds()))
    left = min(length, max(0, int((period_end - effective_at).total_seconds())))
    out = {}
    for t in TIERS:
        added = max(0, PLANS[plan_tier].included[t] - PLANS[from_plan].included[t])
        out[t] = min(PLANS[plan_tier].included[t], base[t] + -(-added * left // length))
    return out
