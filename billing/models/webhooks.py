"""Stripe webhook events, stored before they are processed (the audit trail and the idempotency key).

Written by `billing.webhook_views` (insert, status pending) and `billing.services.webhooks`
(status transitions). The UNIQUE constraint on `stripe_event_id` is what makes a duplicate or
racing delivery harmless: the second INSERT fails and is acknowledged without processing.
"""
from __future__ import annotations

from django.db import models
from django.db.models import Q

__all__ = ["WebhookEvent", "WebhookEventStatus"]


class WebhookEventStatus(models.TextChoices):
    PENDING = "pending", "Pending"        # stored, not (successfully) processed yet; retries may be running
    PROCESSED = "processed", "Processed"  # a handler applied it (or found it stale / already applied)
    FAILED = "failed", "Failed"           # the last retry failed; `error` says why; staff can reprocess
    IGNORED = "ignored", "Ignored"        # a type we do not handle, or provably not ours (`error` says why)


class WebhookEvent(models.Model):
    # Stripe's `evt_…`: one row per event, whatever the number of deliveries.
    stripe_event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    api_version = models.CharField(max_length=32, blank=True, default="")
    # Stripe event `created`, unix seconds (orders events about the same object).
    event_created = models.BigIntegerField(default=0)
    # The whole verified event as delivered.
    payload = models.JSONField()
    # pending -> processed | ignored | failed; failed -> pending again on staff reprocessing.
    status = models.CharField(max_length=16, choices=WebhookEventStatus.choices, default=WebhookEventStatus.PENDING)
    # Last processing error (class/code and message), kept after the final retry; for an event ignored as
    # not ours, the reason. Empty when none.
    error = models.TextField(blank=True, default="")
    # Processing attempts that failed so far (bounded by the task's max_retries).
    retry_count = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "webhook_events"
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["status", "received_at"], name="webhook_event_status_received")]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=WebhookEventStatus.values), name="webhook_event_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.stripe_event_id} {self.type} ({self.status})"
