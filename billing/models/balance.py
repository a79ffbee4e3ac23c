"""The per-org credit balance: a cache of the current billing period, rebuilt-able from facts.

One row per organization. Every accepted action changes exactly one counter here, in the same
transaction that inserts its `billable_actions` row (see billing.services.balance). Writers lock
this row (`SELECT … FOR UPDATE`); whoever needs both locks takes organization -> balance.
"""
from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.db.models import F, Q

from organizations.models import Organization, PlanTier

from ..plans import (
    AUTO_TOPUP_DEFAULT_MONTHLY_CAP_PACKS,
    AUTO_TOPUP_DEFAULT_PACKS,
    AUTO_TOPUP_DEFAULT_THRESHOLD,
    TIERS,
)

__all__ = ["CreditBalance", "PaidFrom"]

_ZERO = Decimal("0.00")


class PaidFrom(models.TextChoices):
    """Where one action was paid from: the plan's allowance, top-up credits, or the soft-limit buffer
    (overage, owed until the next top-up). Billing's charge decides it; usage's facts store it."""
    PLAN = "plan", "Plan allowance"
    CREDITS = "credits", "Top-up credits"
    OVERAGE = "overage", "Overage (soft-limit buffer)"


def _non_negative(name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{name}__gte": 0}), name=f"credit_balance_{name}_gte_0")


class CreditBalance(models.Model):
    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="credit_balance")
    # The period the counters below belong to, [period_start, period_end). Written by
    # balance_set_plan (paid: the Stripe subscription period) or the lazy roll (free: monthly,
    # anchored on the org's creation).
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    # The plan whose allowances are in included_*; written with them by the balance services.
    plan_tier = models.CharField(max_length=16, choices=PlanTier.choices, default=PlanTier.FREE)

    # Actions included this period per tier (from billing.plans). Written by the balance services.
    included_small = models.PositiveIntegerField(default=0)
    included_medium = models.PositiveIntegerField(default=0)
    included_large = models.PositiveIntegerField(default=0)
    included_xl = models.PositiveIntegerField(default=0)
    # Actions paid from the plan this period per tier; = count of this period's `plan` rows.
    # Invariant (until a downgrade without reset): used <= included.
    used_small = models.PositiveIntegerField(default=0)
    used_medium = models.PositiveIntegerField(default=0)
    used_large = models.PositiveIntegerField(default=0)
    used_xl = models.PositiveIntegerField(default=0)
    # Actions run past exhaustion this period per tier (the soft-limit buffer); = count of this
    # period's `overage` rows. Invariant: overage <= ceil(BILLING_SOFT_LIMIT_BUFFER% * included).
    overage_small = models.PositiveIntegerField(default=0)
    overage_medium = models.PositiveIntegerField(default=0)
    overage_large = models.PositiveIntegerField(default=0)
    overage_xl = models.PositiveIntegerField(default=0)

    # Credits (exact, 2 places). Top-up credits roll over between periods (people paid for them).
    # purchased: sum of credited top-ups (written by balance_add_topup_credits).
    # used: credits spent by `credits` actions + overage settled from top-ups. used <= purchased.
    topup_purchased = models.DecimalField(max_digits=12, decimal_places=2, default=_ZERO)
    topup_used = models.DecimalField(max_digits=12, decimal_places=2, default=_ZERO)
    # Credits owed for overage actions (their tier cost), not yet settled; the next top-up
    # pays this first. Written by balance_charge (+) and balance_add_topup_credits (-). >= 0.
    overage_credits_owed = models.DecimalField(max_digits=12, decimal_places=2, default=_ZERO)

    # Auto top-up (opt-in). Threshold in credits (total remaining below it triggers a purchase),
    # packs per purchase, and at most this many packs per calendar month. Written by
    # auto_topup_settings_update.
    auto_topup_enabled = models.BooleanField(default=False)
    auto_topup_threshold = models.DecimalField(max_digits=12, decimal_places=2, default=AUTO_TOPUP_DEFAULT_THRESHOLD)
    auto_topup_packs = models.PositiveIntegerField(default=AUTO_TOPUP_DEFAULT_PACKS)
    auto_topup_monthly_cap_packs = models.PositiveIntegerField(default=AUTO_TOPUP_DEFAULT_MONTHLY_CAP_PACKS)

    # Last time each warning email kind was queued per tier (BILLING_WARNING_COOLDOWN_HOURS
    # cooldown). Written by balance_charge; kept across periods so the cooldown spans a reset.
    warned_80_small_at = models.DateTimeField(null=True, blank=True)
    warned_80_medium_at = models.DateTimeField(null=True, blank=True)
    warned_80_large_at = models.DateTimeField(null=True, blank=True)
    warned_80_xl_at = models.DateTimeField(null=True, blank=True)
    warned_100_small_at = models.DateTimeField(null=True, blank=True)
    warned_100_medium_at = models.DateTimeField(null=True, blank=True)
    warned_100_large_at = models.DateTimeField(null=True, blank=True)
    warned_100_xl_at = models.DateTimeField(null=True, blank=True)
    warned_overage_small_at = models.DateTimeField(null=True, blank=True)
    warned_overage_medium_at = models.DateTimeField(null=True, blank=True)
    warned_overage_large_at = models.DateTimeField(null=True, blank=True)
    warned_overage_xl_at = models.DateTimeField(null=True, blank=True)
    # Last time the tier_blocked email was queued per tier (same cooldown as the warnings above).
    # Written by balance_record_refusal / a refused batch item; kept across periods.
    warned_blocked_small_at = models.DateTimeField(null=True, blank=True)
    warned_blocked_medium_at = models.DateTimeField(null=True, blank=True)
    warned_blocked_large_at = models.DateTimeField(null=True, blank=True)
    warned_blocked_xl_at = models.DateTimeField(null=True, blank=True)

    # First refusal (402 CREDITS_EXHAUSTED) of the tier in this period, while it stays blocked:
    # "blocked since" on the dashboard. Set once per period by a conditional UPDATE (… WHERE
    # blocked_<tier>_at IS NULL) after the refused charge rolled back, or in a batch's own UPDATE;
    # cleared by the tier's next accepted action, by a purchase or plan change that unblocks it,
    # and by a period reset. Not a fact: reconcile neither reads nor rebuilds it.
    blocked_small_at = models.DateTimeField(null=True, blank=True)
    blocked_medium_at = models.DateTimeField(null=True, blank=True)
    blocked_large_at = models.DateTimeField(null=True, blank=True)
    blocked_xl_at = models.DateTimeField(null=True, blank=True)

    # Bumped by every write (optimistic checks, debugging); updated_at is the service's `now`.
    version = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "credit_balances"
        constraints = [
            *[_non_negative(f"{kind}_{t}") for kind in ("included", "used", "overage") for t in TIERS],
            _non_negative("topup_purchased"),
            _non_negative("topup_used"),
            _non_negative("overage_credits_owed"),
            _non_negative("auto_topup_threshold"),
            models.CheckConstraint(condition=Q(topup_used__lte=F("topup_purchased")),
                                   name="credit_balance_topup_used_lte_purchased"),
            models.CheckConstraint(condition=Q(period_end__gt=F("period_start")),
                                   name="credit_balance_period_ordered"),
            models.CheckConstraint(condition=Q(plan_tier__in=PlanTier.values), name="credit_balance_plan_tier_valid"),
            models.CheckConstraint(condition=Q(auto_topup_packs__gte=1), name="credit_balance_auto_topup_packs_gte_1"),
        ]

    def __str__(self) -> str:
        return f"balance of {self.organization_id} ({self.plan_tier}, {self.period_start:%Y-%m-%d})"

    # Small typed accessors so callers don't build attribute names by hand.
    def included(self, tier: str) -> int:
        return getattr(self, f"included_{tier}")

    def used(self, tier: str) -> int:
        return getattr(self, f"used_{tier}")

    def overage(self, tier: str) -> int:
        return getattr(self, f"overage_{tier}")

    def blocked_at(self, tier: str):
        return getattr(self, f"blocked_{tier}_at")

    def plan_remaining(self, tier: str) -> int:
        return max(self.included(tier) - self.used(tier), 0)

    @property
    def topup_remaining(self) -> Decimal:
        return self.topup_purchased - self.topup_used
