"""Usage facts: one append-only `billable_actions` row per accepted agent action.

Rows are never edited or deleted; a correction is a new row. The cached `credit_balances` row
of billing can always be rebuilt from these (plan rows -> used_*, overage rows -> overage_*,
credits rows -> topup_used) — that is what reconcile proves.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from billing.models import PaidFrom
from billing.plans import TIERS
from organizations.models import Organization

IDEMPOTENCY_KEY_MAX_LENGTH = 255


class BillableAction(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="billable_actions")
    # The platform user who ran the action (the orchestrator's id, not necessarily a Django user).
    user_id = models.CharField(max_length=255)
    tier = models.CharField(max_length=8, choices=[(t, t) for t in TIERS])
    # Credits this action cost, exact: plan -> 0.00; credits -> the tier cost, taken from top-up
    # credits; overage -> the tier cost, owed and settled from the next top-up. Written once by
    # usage.services at insert, never changed.
    credits_charged = models.DecimalField(max_digits=12, decimal_places=2)
    # Where the action was paid from (see PaidFrom). Written once at insert.
    paid_from = models.CharField(max_length=8, choices=PaidFrom.choices)
    # Developer payout owed for this action, integer cents (recorded, not paid yet — later phase).
    payout_cents = models.PositiveIntegerField(default=0)
    agent_id = models.CharField(max_length=255, null=True, blank=True)
    agent_name = models.CharField(max_length=255, null=True, blank=True)
    action_key = models.CharField(max_length=255, null=True, blank=True)
    description = models.CharField(max_length=1000, null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    # The billing period of the balance this action was charged against.
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    # Caller-chosen key; the same key for the same org returns the first result (unique per org,
    # NULL = no idempotency, many allowed). An opaque string compared byte for byte: the column's
    # collation is binary and NO PAD per engine (migration 0006; an AlterField here must re-apply it).
    idempotency_key = models.CharField(max_length=IDEMPOTENCY_KEY_MAX_LENGTH, null=True, blank=True)
    # SHA-256 hex of the request the key was first used for (usage.services.request_fingerprint:
    # org, userId, actionTier, agentId, actionKey); the same key with another request is refused 409
    # IDEMPOTENCY_KEY_REUSED. Written once at insert, only with a key; NULL on rows recorded before
    # the column existed (their own columns are compared instead).
    request_fingerprint = models.CharField(max_length=64, null=True, blank=True)
    # The API body answered when this action was recorded, replayed verbatim for its key.
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "billable_actions"
        constraints = [
            models.UniqueConstraint(fields=["organization", "idempotency_key"], name="billable_action_unique_idem_key"),
            models.CheckConstraint(condition=Q(tier__in=list(TIERS)), name="billable_action_tier_valid"),
            models.CheckConstraint(condition=Q(paid_from__in=PaidFrom.values), name="billable_action_paid_from_valid"),
            models.CheckConstraint(condition=Q(credits_charged__gte=0), name="billable_action_credits_gte_0"),
            models.CheckConstraint(condition=~Q(paid_from=PaidFrom.PLAN) | Q(credits_charged=0),
                                   name="billable_action_plan_is_free_of_credits"),
        ]
        indexes = [
            models.Index(fields=["organization", "created_at"], name="billable_action_org_created"),
            models.Index(fields=["organization", "period_start"], name="billable_action_org_period"),
            # Usage history filters (tier / agent): without them a filter matching nothing scans the org's
            # whole range (820 ms at 1M actions measured); with them, a page is a short index range.
            models.Index(fields=["organization", "tier", "created_at"], name="billable_action_org_tier"),
            models.Index(fields=["organization", "agent_id", "created_at"], name="billable_action_org_agent"),
        ]

    def __str__(self) -> str:
        return f"{self.tier} action of {self.organization_id} paid from {self.paid_from}"


class UsageDailyRollup(models.Model):
    """Per org, UTC day, tier and user: how many actions and how many credits they took, so the usage
    history page (daily chart, per-user table) reads a few hundred rows instead of scanning up to a
    million `billable_actions` (measured: 2-3 s per GROUP BY on MariaDB at 1M actions in a period).

    A derived cache, never a fact: written only by `usage.rollups.rollup_add`, called by
    `usage.services` in the same transaction that inserts the action rows (under the org's balance
    lock), so it always equals `GROUP BY organization, DATE(created_at), tier, user_id` over the facts.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    # UTC calendar day of the actions' created_at.
    day = models.DateField()
    tier = models.CharField(max_length=8, choices=[(t, t) for t in TIERS])
    user_id = models.CharField(max_length=255)
    # Number of billable_actions rows in this bucket, >= 1.
    actions = models.PositiveIntegerField()
    # SUM(billable_actions.credits_charged) of the bucket (top-up credits + overage; plan actions are 0). >= 0.
    credits_charged = models.DecimalField(max_digits=14, decimal_places=2)

    class Meta:
        db_table = "usage_daily_rollups"
        constraints = [
            models.UniqueConstraint(fields=["organization", "day", "tier", "user_id"], name="usage_rollup_unique_bucket"),
            models.CheckConstraint(condition=Q(tier__in=list(TIERS)), name="usage_rollup_tier_valid"),
            models.CheckConstraint(condition=Q(credits_charged__gte=0), name="usage_rollup_credits_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.day} {self.tier} {self.user_id}: {self.actions}"
