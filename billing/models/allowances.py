"""Allowance changes within a period: the record of a prorated upgrade (DESIGN "Upgrade").

An upgrade inside a paid period adds, per tier, `ceil((new included - old included) * left / period)`
actions (left = time from the upgrade to the period end), the way Stripe prorates the price; the full
allowance of the new plan comes with the next period. The balance holds the result in `included_*`;
this row says where it came from, so `reconcile` expects it (not the plan's full allowance) and a
replayed event finds the change already made. One row per (org, period, plan reached).
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from organizations.models import Organization, PlanTier

from .subscriptions import Subscription

__all__ = ["AllowanceChange"]


class AllowanceChange(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="allowance_changes")
    subscription = models.ForeignKey(Subscription, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="allowance_changes")
    # The balance period the change belongs to (its start identifies it).
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    from_plan_tier = models.CharField(max_length=16, choices=PlanTier.choices)
    to_plan_tier = models.CharField(max_length=16, choices=PlanTier.choices)
    # When the upgrade took effect for proration (Stripe's time of the update request).
    effective_at = models.DateTimeField()
    # The period's allowances after the change (what the balance's included_* must be).
    included_small = models.PositiveIntegerField()
    included_medium = models.PositiveIntegerField()
    included_large = models.PositiveIntegerField()
    included_xl = models.PositiveIntegerField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "allowance_changes"
        ordering = ["organization", "period_start", "effective_at"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "period_start", "to_plan_tier"],
                                    name="allowance_change_once_per_period_plan"),
            models.CheckConstraint(condition=Q(period_end__gt=models.F("period_start")),
                                   name="allowance_change_period_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.from_plan_tier}->{self.to_plan_tier} @ {self.effective_at:%Y-%m-%d %H:%M}"

    def included(self) -> dict[str, int]:
        return {"small": self.included_small, "medium": self.included_medium, "large": self.included_large,
                "xl": self.included_xl}
