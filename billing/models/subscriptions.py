"""Stripe subscriptions, mirrored locally (one row per Stripe subscription ever seen).

Written only by `billing.services.subscription_sync.subscription_sync` (from a Stripe subscription
object, via webhooks or a re-read) and by the dunning service (grace period). Checkout services
may create the row early from the object Stripe returned; they also go through subscription_sync.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from organizations.models import Organization, PlanTier, SubscriptionStatus

__all__ = ["Subscription", "StripeSubscriptionStatus", "LIVE_SUBSCRIPTION_STATUSES", "ENDED_SUBSCRIPTION_STATUSES"]


#: Every status a Stripe subscription can have: the same enum the organization mirrors (one
#: definition, in organizations; billing may import it).
StripeSubscriptionStatus = SubscriptionStatus


#: Statuses in which the subscription's plan applies to the org.
LIVE_SUBSCRIPTION_STATUSES = frozenset({
    StripeSubscriptionStatus.TRIALING, StripeSubscriptionStatus.ACTIVE, StripeSubscriptionStatus.PAST_DUE,
})
#: Statuses that will never become live again.
ENDED_SUBSCRIPTION_STATUSES = frozenset({
    StripeSubscriptionStatus.CANCELED, StripeSubscriptionStatus.INCOMPLETE_EXPIRED,
})


class Subscription(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="subscriptions")
    # Stripe's `sub_…`; one row per Stripe subscription (the upsert key of subscription_sync).
    stripe_subscription_id = models.CharField(max_length=255, unique=True)
    stripe_customer_id = models.CharField(max_length=255, db_index=True)
    # The price of the subscription's (single) item, as Stripe reports it.
    stripe_price_id = models.CharField(max_length=255, blank=True, default="")
    # The plan IN EFFECT (allowances; never `free`: a free org has no subscription). Written by
    # subscription_sync: the price's plan, except during a deferred downgrade (see pending_plan_tier).
    plan_tier = models.CharField(max_length=16, choices=PlanTier.choices)
    # Deferred downgrade: the lower plan Stripe already bills from the next period on (its price was
    # switched with proration_behavior=none); plan_tier keeps the higher plan until current_period_end.
    # "" = none pending. Invariant: rank(pending_plan_tier) < rank(plan_tier). Written by subscription_sync.
    pending_plan_tier = models.CharField(max_length=16, blank=True, default="",
                                         choices=[("", "None")] + [c for c in PlanTier.choices if c[0] != "free"])
    # The subscription's default payment method (Stripe `pm_…`) as Stripe reports it; "" = no card on
    # the subscription (a trial started without one ends on Free). Written by subscription_sync.
    default_payment_method_id = models.CharField(max_length=255, blank=True, default="")
    # Mirror of Stripe's status; written by subscription_sync (and the dunning service's cancel).
    status = models.CharField(max_length=24, choices=StripeSubscriptionStatus.choices)
    # Current billing period as Stripe reports it (UTC). A new start = a new period (usage resets).
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    trial_start = models.DateTimeField(null=True, blank=True)
    trial_end = models.DateTimeField(null=True, blank=True)
    # True = Stripe ends the subscription at current_period_end (downgrade to free / cancel then).
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Dunning: set when an invoice payment fails (now + BILLING_GRACE_PERIOD_DAYS), cleared when an
    # invoice is paid. Written only by billing.services.dunning. Null = not in a grace period.
    grace_period_ends_at = models.DateTimeField(null=True, blank=True)
    # When the "grace ending" reminder went out for the current grace period (dunning; cleared with it).
    grace_ending_notified_at = models.DateTimeField(null=True, blank=True)
    # Stripe event `created` (unix seconds) of the newest state applied to this row. An event older
    # than this never overwrites the row (out-of-order delivery). 0 = written from a direct API read.
    # Fresh API reads count too: they advance it to the read's time (Stripe's `Date` header).
    last_event_created = models.BigIntegerField(default=0)
    # The invoice stream's own mark (dunning): `created` of the newest invoice payment event applied to
    # the grace period. Kept apart from last_event_created (one ordering rule per object stream); a
    # subscription state older than this cannot end a grace period the invoice stream started.
    dunning_event_created = models.BigIntegerField(default=0)
    # An upgrade Stripe holds back until its proration invoice is paid (payment_behavior=
    # pending_if_incomplete, Stripe's `pending_update`): the plan asked for, when it was asked (Stripe
    # time: the proration starts there), and when Stripe discards it. "" = none pending; plan_tier is
    # unchanged meanwhile (allowances change only once Stripe applies it).
    pending_update_plan_tier = models.CharField(max_length=16, blank=True, default="",
                                                choices=[("", "None")] + [c for c in PlanTier.choices
                                                                          if c[0] != "free"])
    pending_update_at = models.DateTimeField(null=True, blank=True)
    pending_update_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "subscriptions"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "status"], name="subscription_org_status")]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=StripeSubscriptionStatus.values),
                                   name="subscription_status_valid"),
            models.CheckConstraint(condition=Q(plan_tier__in=[PlanTier.STARTER, PlanTier.PRO, PlanTier.MAX]),
                                   name="subscription_plan_tier_paid"),
            models.CheckConstraint(condition=Q(last_event_created__gte=0), name="subscription_last_event_nonneg"),
            models.CheckConstraint(condition=Q(dunning_event_created__gte=0), name="subscription_dunning_event_nonneg"),
            models.CheckConstraint(condition=Q(pending_plan_tier__in=["", PlanTier.STARTER, PlanTier.PRO]),
                                   name="subscription_pending_plan_tier_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.stripe_subscription_id} ({self.plan_tier}, {self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_SUBSCRIPTION_STATUSES
