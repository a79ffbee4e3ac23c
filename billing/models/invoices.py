"""Stripe invoices, cached locally for the dashboard's invoice list and for dunning.

Written only by `billing.services.webhooks` (invoice.* events) via `invoice_sync`. Stripe stays
the source of truth; a row can always be rebuilt by re-reading the invoice.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

from organizations.models import Organization

from .subscriptions import Subscription

__all__ = ["Invoice", "InvoiceStatus", "InvoiceType"]


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open"
    PAID = "paid", "Paid"
    UNCOLLECTIBLE = "uncollectible", "Uncollectible"
    VOID = "void", "Void"


class InvoiceType(models.TextChoices):
    SUBSCRIPTION = "subscription", "Subscription"
    CREDIT_PURCHASE = "credit_purchase", "Credit purchase"


class Invoice(models.Model):
    stripe_invoice_id = models.CharField(max_length=255, unique=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="invoices")
    # Null for credit purchases, or when the subscription row is not known yet.
    subscription = models.ForeignKey(Subscription, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="invoices")
    # Integer cents in `currency`, as Stripe reports them; >= 0; paid <= due unless Stripe says otherwise.
    amount_due_cents = models.BigIntegerField(default=0)
    amount_paid_cents = models.BigIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    # Mirror of Stripe's invoice status.
    status = models.CharField(max_length=16, choices=InvoiceStatus.choices)
    type = models.CharField(max_length=16, choices=InvoiceType.choices, default=InvoiceType.SUBSCRIPTION)
    # Stripe's `billing_reason` (subscription_create / subscription_cycle / subscription_update / manual …).
    # A `subscription_update` invoice of a pending upgrade is not dunned: unpaid, Stripe discards the change.
    billing_reason = models.CharField(max_length=40, blank=True, default="")
    hosted_invoice_url = models.CharField(max_length=1000, blank=True, default="")
    invoice_pdf = models.CharField(max_length=1000, blank=True, default="")
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    due_date = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    # Stripe event `created` of the newest state applied; older events never overwrite the row.
    last_event_created = models.BigIntegerField(default=0)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "invoices"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "created_at"], name="invoice_org_created")]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=InvoiceStatus.values), name="invoice_status_valid"),
            models.CheckConstraint(condition=Q(type__in=InvoiceType.values), name="invoice_type_valid"),
            models.CheckConstraint(condition=Q(amount_due_cents__gte=0) & Q(amount_paid_cents__gte=0),
                                   name="invoice_amounts_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.stripe_invoice_id} {self.amount_due_cents}c {self.status}"
