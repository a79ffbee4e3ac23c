"""The plan picker page (/billing/plans): each plan with the action the org can take on it."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from organizations.models import Membership, PlanTier, SubscriptionStatus

from ..plans import PLANS, TIER_CREDIT_COST, TIERS, TOPUP_PACK_CREDITS, TOPUP_PACK_PRICE_CENTS, TRIAL_DAYS, Plan, format_cents
from .common import (
    CANCEL_URL,
    CHECKOUT_URL,
    DOWNGRADE_URL,
    KEEP_PLAN_URL,
    TIER_LABELS,
    UPGRADE_URL,
    current_subscription,
    date_text,
    pending_downgrade,
)


@dataclass(frozen=True)
class PlanOption:
    plan: Plan
    price: str
    is_current: bool
    action: str | None        # "trial" | "upgrade" | "downgrade" | "scheduled" (pending downgrade) |
                              # "keep" (current plan, cancels a pending downgrade) | None (current)
    action_label: str
    action_url: str | None    # where the form posts; None with action "scheduled" (nothing to do)
    allowances: list[tuple[str, int]]


def plan_picker_context(*, membership: Membership, now: datetime) -> dict[str, Any]:
    org = membership.organization
    current = PLANS[org.subscription_tier]
    trial_available = org.trial_ends_at is None
    has_paid_sub = current.price_cents > 0 and org.subscription_status in (
        SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING, SubscriptionStatus.PAST_DUE)
    sub = current_subscription(org) if has_paid_sub else None
    pending_tier = sub.pending_plan_tier if pending_downgrade(sub) else ""
    options = []
    for plan in PLANS.values():
        is_current = plan.tier == current.tier
        action = url = None
        label = "Current plan"
        if not is_current:
            going_up = plan.rank > current.rank
            if not has_paid_sub and plan.tier != PlanTier.FREE:
                # From Free (or a dead subscription) every paid plan starts in Checkout.
                url = CHECKOUT_URL
                if trial_available and plan.trial_eligible:
                    action, label = "trial", f"Start {TRIAL_DAYS}-day trial"
                else:
                    action, label = "upgrade", f"Upgrade to {plan.name}"
            elif plan.tier == PlanTier.FREE:
                action, label, url = "downgrade", "Downgrade to Free", CANCEL_URL
            elif plan.tier == pending_tier:
                action, label = "scheduled", f"Starts {date_text(sub.current_period_end)}"
            else:
                action = "upgrade" if going_up else "downgrade"
                label = f"{'Upgrade' if going_up else 'Downgrade'} to {plan.name}"
                url = UPGRADE_URL if going_up else DOWNGRADE_URL
        elif pending_tier:
            action, label, url = "keep", f"Keep {plan.name}", KEEP_PLAN_URL
        options.append(PlanOption(plan=plan, price=format_cents(plan.price_cents), is_current=is_current,
                                  action=action, action_label=label, action_url=url,
                                  allowances=[(TIER_LABELS[t], plan.included[t]) for t in TIERS]))
    return {
        "org": org,
        "membership": membership,
        "can_manage": membership.is_admin,
        "options": options,
        "current_plan": current,
        "trial_available": trial_available,
        "trial_days": TRIAL_DAYS,
        "tier_costs": [(TIER_LABELS[t], TIER_CREDIT_COST[t]) for t in TIERS],
        "topup_pack_credits": TOPUP_PACK_CREDITS,
        "topup_pack_price": format_cents(TOPUP_PACK_PRICE_CENTS),
    }
