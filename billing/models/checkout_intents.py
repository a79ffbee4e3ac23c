"""Checkout intents: one row per attempt to open a subscription Checkout Session (outgoing idempotency).

Written only by `billing.services.plan_changes` (create / started / session recorded / expired) and by the
`checkout.session.completed` webhook (completed). The row is committed before Stripe is called and the
call's idempotency key is `checkout:{row.pk}`, so a retry of the same intent can never create a second
session, and a row left STARTED (we crashed between Stripe's answer and recording it) is listed by
`reconcile --stripe` / the daily health summary instead of being retried blindly.

"At most one open intent per org" is a database invariant: `open_slot` is TRUE while the row is
created/started (NULL otherwise) under UNIQUE(organization, open_slot); NULLs never collide in
MariaDB/MySQL unique indexes. A double click finds the open row and gets its session URL back.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from organizations.models import Organization, PlanTier

__all__ = ["CheckoutIntent", "CheckoutIntentStatus", "OPEN_CHECKOUT_INTENT_STATUSES"]


class CheckoutIntentStatus(models.TextChoices):
    CREATED = "created", "Created"        # row committed, Stripe not called yet
    STARTED = "started", "Started"        # Stripe call about to happen / done; session id set once recorded
    COMPLETED = "completed", "Completed"  # checkout.session.completed arrived for its session
    EXPIRED = "expired", "Expired"        # superseded (other plan, too old) or the session expired


OPEN_CHECKOUT_INTENT_STATUSES = (CheckoutIntentStatus.CREATED, CheckoutIntentStatus.STARTED)


class CheckoutIntent(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="checkout_intents")
    # Checkout mode; only subscription checkouts go through this table (credit packs use CreditPurchase).
    mode = models.CharField(max_length=16, default="subscription",
                            choices=[("subscription", "Subscription")])
    # The paid plan asked for.
    plan_tier = models.CharField(max_length=16, choices=[c for c in PlanTier.choices if c[0] != "free"])
    # Trial days offered in the session (0 = none), decided when the row is written.
    trial_days = models.PositiveSmallIntegerField(default=0)
    # created -> started -> completed | expired; created -> expired. Conditional UPDATEs only.
    status = models.CharField(max_length=16, choices=CheckoutIntentStatus.choices,
                              default=CheckoutIntentStatus.CREATED)
    # TRUE while status is created/started, else NULL (see module doc).
    open_slot = models.BooleanField(null=True, blank=True, default=True)
    # Stripe's `cs_…` and hosted URL, recorded right after the Stripe call (unique when set).
    stripe_checkout_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    checkout_url = models.URLField(max_length=1000, blank=True, default="")
    # Stripe's session expiry (`expires_at`), so an open row is not reused after its session died.
    session_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "checkout_intents"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="checkout_intent_status_created")]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=CheckoutIntentStatus.values), name="checkout_intent_status_valid"),
            models.CheckConstraint(condition=Q(plan_tier__in=[PlanTier.STARTER, PlanTier.PRO, PlanTier.MAX]),
                                   name="checkout_intent_plan_tier_paid"),
            models.CheckConstraint(
                condition=(Q(status__in=["created", "started"], open_slot=True)
                           | (~Q(status__in=["created", "started"]) & Q(open_slot__isnull=True))),
                name="checkout_intent_open_slot_matches_status"),
            models.UniqueConstraint(fields=["organization", "open_slot"], name="checkout_intent_one_open_per_org"),
        ]

    def __str__(self) -> str:
        return f"checkout #{self.pk} {self.plan_tier} ({self.status})"
