"""Credit purchases (top-ups): one row per attempt to buy credit packs, plus staff grants.

Append-only facts in spirit: a row is created as an intent (pending), moves forward through
its status once, and is never reused for another payment. Written only by
`billing.services.topup_purchases` (intent rows, status transitions, credits application).

Credits are added to the org's balance exactly once per row: the service flips
`credits_applied_at` from NULL with a conditional UPDATE and calls the engine's
`balance_add_topup_credits` in the same transaction. Whichever of the Stripe API response or the
webhook arrives first does it; the other finds `credits_applied_at` set and does nothing.

"At most one auto top-up in flight per org" is a database invariant: `open_slot` is TRUE while an
auto top-up row is open (pending / started / requires_action) and NULL otherwise, under a UNIQUE
(organization, open_slot) constraint (NULLs never collide in MariaDB/MySQL unique indexes).
"""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from organizations.models import Organization

__all__ = [
    "CreditPurchase", "PurchaseKind", "PurchaseMethod", "PurchaseStatus", "OPEN_PURCHASE_STATUSES",
    "AutoTopupSettingsChange",
]


class PurchaseKind(models.TextChoices):
    MANUAL = "manual", "Manual"              # an org admin bought packs (Checkout or saved card)
    AUTO_TOPUP = "auto_topup", "Auto top-up"  # the engine's trigger bought packs off session
    GRANT = "grant", "Staff grant"           # staff added credits for free (granted_by + reason)


class PurchaseMethod(models.TextChoices):
    CHECKOUT = "checkout", "Stripe Checkout"        # hosted page, payment mode, user present
    SAVED_CARD = "saved_card", "Saved card"         # off-session PaymentIntent on the customer's card
    NONE = "none", "No payment"                     # staff grants


class PurchaseStatus(models.TextChoices):
    PENDING = "pending", "Pending"                        # intent row written, Stripe not called yet
    STARTED = "started", "Started"                        # Stripe call about to happen / in flight
    SUCCEEDED = "succeeded", "Succeeded"                  # paid (or granted); credits applied
    FAILED = "failed", "Failed"                           # declined / insufficient funds / error
    REQUIRES_ACTION = "requires_action", "Requires action"  # card needs authentication; admin emailed
    CANCELED = "canceled", "Canceled"                     # abandoned (checkout expired, auth never done)


#: Statuses of a purchase that may still succeed.
OPEN_PURCHASE_STATUSES = (PurchaseStatus.PENDING, PurchaseStatus.STARTED, PurchaseStatus.REQUIRES_ACTION)


class CreditPurchase(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="credit_purchases")
    kind = models.CharField(max_length=16, choices=PurchaseKind.choices)
    method = models.CharField(max_length=16, choices=PurchaseMethod.choices)
    # Number of 500-credit packs bought (>= 1 for paid kinds; 0 for a grant of an arbitrary amount).
    packs = models.PositiveSmallIntegerField()
    # Credits this row adds when it succeeds: packs x TOPUP_PACK_CREDITS (or the granted amount). > 0.
    credits = models.DecimalField(max_digits=12, decimal_places=2)
    # Price charged, integer cents in `currency`: packs x TOPUP_PACK_PRICE_CENTS (0 for grants). >= 0.
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    # pending -> started -> succeeded | failed | requires_action; requires_action -> succeeded | canceled |
    # failed; pending/started -> canceled. Written only by billing.services.topup_purchases / auto_topup (conditional UPDATEs).
    status = models.CharField(max_length=16, choices=PurchaseStatus.choices, default=PurchaseStatus.PENDING)
    # TRUE while an auto top-up row is open (status in OPEN_PURCHASE_STATUSES), else NULL. See module doc.
    open_slot = models.BooleanField(null=True, blank=True, default=None)
    # Stripe ids, set as soon as known (API response or webhook). Unique when set.
    stripe_payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_checkout_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_invoice_id = models.CharField(max_length=255, null=True, blank=True)
    # Our stable BillingError code (CARD_DECLINED, INSUFFICIENT_FUNDS, AUTHENTICATION_REQUIRED, …) and
    # Stripe's/our message, for failed / requires_action / canceled rows. Empty otherwise.
    failure_code = models.CharField(max_length=64, blank=True, default="")
    failure_message = models.TextField(blank=True, default="")
    # Who asked: the admin who bought, the staff member who granted; null for auto top-ups.
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    # Staff grants: why (required for kind=grant).
    reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    # Last time the charge task was queued for this row (the sweeper re-queues stale pending rows).
    queued_at = models.DateTimeField(null=True, blank=True)
    # When the row went STARTED (just before the Stripe call).
    started_at = models.DateTimeField(null=True, blank=True)
    # When the row reached a final status (succeeded / failed / canceled) or requires_action.
    completed_at = models.DateTimeField(null=True, blank=True)
    # When this row's credits were added to the balance. Set exactly once, only with status succeeded.
    credits_applied_at = models.DateTimeField(null=True, blank=True)
    # Credits (exact, 2 places) of this row that went straight to owed overage when they were applied
    # (balance_add_topup_credits' settled_overage, taken from the whole top-up remainder, so it may
    # exceed this row's own credits when earlier credits were left over), written once in that same
    # transaction under the balance lock. >= 0; 0 while not applied. Reconcile rebuilds
    # topup_used / overage_credits_owed from it: the settlement depends on the order in which the
    # balance lock saw actions and top-ups, which no timestamp records (every writer takes `now`
    # before waiting for the lock).
    overage_settled = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0.00"))
    # Set by the sweeper when a row has been stuck after the Stripe call for too long (ops must look).
    flagged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "credit_purchases"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "kind", "created_at"], name="purchase_org_kind_created"),
            models.Index(fields=["status", "created_at"], name="purchase_status_created"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=PurchaseStatus.values), name="purchase_status_valid"),
            models.CheckConstraint(condition=Q(kind__in=PurchaseKind.values), name="purchase_kind_valid"),
            models.CheckConstraint(condition=Q(method__in=PurchaseMethod.values), name="purchase_method_valid"),
            models.CheckConstraint(condition=Q(credits__gt=0), name="purchase_credits_positive"),
            models.CheckConstraint(condition=Q(amount_cents__gte=0), name="purchase_amount_nonneg"),
            models.CheckConstraint(condition=Q(kind="grant") | Q(packs__gte=1), name="purchase_packs_positive"),
            models.CheckConstraint(condition=~Q(kind="grant") | (Q(method="none") & ~Q(reason="")),
                                   name="purchase_grant_has_reason"),
            models.CheckConstraint(condition=Q(overage_settled__gte=0), name="purchase_overage_settled_gte_0"),
            models.CheckConstraint(condition=Q(credits_applied_at__isnull=False) | Q(overage_settled=0),
                                   name="purchase_overage_settled_only_when_applied"),
            # Credits are applied only to a succeeded row.
            models.CheckConstraint(condition=Q(credits_applied_at__isnull=True) | Q(status="succeeded"),
                                   name="purchase_credits_only_when_succeeded"),
            # The open slot is only ever TRUE (never FALSE), only for open auto top-ups.
            models.CheckConstraint(
                condition=Q(open_slot__isnull=True) | (Q(open_slot=True) & Q(kind="auto_topup")
                                                       & Q(status__in=[s.value for s in OPEN_PURCHASE_STATUSES])),
                name="purchase_open_slot_only_open_auto"),
            models.UniqueConstraint(fields=["organization", "open_slot"], name="purchase_one_open_auto_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.packs}x for org {self.organization_id} ({self.status})"


class AutoTopupSettingsChange(models.Model):
    """Append-only audit of auto top-up settings changes (by an admin, or by the system when three
    failures in a row switch it off). The newest row is also the reset point of the failure streak."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    # Null when the system changed it (e.g. switched off after three failures).
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    enabled = models.BooleanField()
    # Credits; the trigger fires when total remaining credits < threshold. 10..500.
    threshold = models.DecimalField(max_digits=12, decimal_places=2)
    packs = models.PositiveSmallIntegerField()
    monthly_cap_packs = models.PositiveSmallIntegerField()
    # "admin" (settings form/API) or "three_failures" (system).
    reason = models.CharField(max_length=32)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "auto_topup_settings_changes"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "created_at"], name="autotopup_change_org_created")]
