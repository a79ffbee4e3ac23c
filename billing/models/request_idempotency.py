"""Incoming idempotency of the money-moving browser endpoints: one row per (org, user, key).

Written only by `billing.idempotency` (the view-layer wrapper) and, for the purchase link, by
`billing.services.topup_purchases`. The key is the client's `Idempotency-Key` header or the dashboard form's
one-time token: an opaque, case-sensitive string; it is matched by `key_hash` (SHA-256 of its UTF-8
bytes), so no collation can fold case or trailing spaces on MariaDB or MySQL 8.

in_progress -> completed (the response is stored and replayed for every repeat) | failed (5xx or an
exception: the outcome is unknown, a retry with the same key takes the row over and re-drives the
same intent, e.g. `credit_purchase`). A request refused as invalid (400) deletes its row: nothing
ran, the key stays free.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from organizations.models import Organization

__all__ = ["RequestIdempotency", "RequestIdempotencyStatus"]


class RequestIdempotencyStatus(models.TextChoices):
    IN_PROGRESS = "in_progress", "In progress"  # claimed by a request that is running now
    COMPLETED = "completed", "Completed"        # response stored; repeats replay it
    FAILED = "failed", "Failed"                 # 5xx / exception; a retry with the same key takes it over


class RequestIdempotency(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    # Keys are scoped per org and per user (two admins' keys never collide).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # SHA-256 (hex) of the key's UTF-8 bytes: the byte-exact uniqueness handle.
    key_hash = models.CharField(max_length=64)
    # The key as sent (1..255 characters), for staff; never used for matching.
    key = models.CharField(max_length=255)
    # The route name the key was first used on (`credits-topup`, `billing-api-upgrade`, ...).
    endpoint = models.CharField(max_length=64)
    # SHA-256 (hex) of method, endpoint, query and canonical body: the same key with another request is
    # refused with 409 IDEMPOTENCY_KEY_REUSED.
    fingerprint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=RequestIdempotencyStatus.choices,
                              default=RequestIdempotencyStatus.IN_PROGRESS)
    # Times a request took the row (1 = the first; > 1 after failed / stale attempts were retried).
    attempts = models.PositiveIntegerField(default=1)
    # The stored response (completed rows; last attempt's status for failed ones): HTTP status,
    # Content-Type, Location (redirects), body text, flash messages [[level, text, tags], ...].
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_content_type = models.CharField(max_length=100, blank=True, default="")
    response_location = models.CharField(max_length=2000, blank=True, default="")
    response_body = models.TextField(blank=True, default="")
    response_messages = models.JSONField(default=list, blank=True)
    # The credit purchase this request created (saved-card top-ups): a retry after a failure charges
    # that same row again (same Stripe idempotency key) instead of buying again. Written by topup_purchases.
    credit_purchase = models.ForeignKey("billing.CreditPurchase", null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    created_at = models.DateTimeField()
    # Last claim / outcome; an in_progress row older than the stale limit may be taken over.
    updated_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "billing_request_idempotency"
        indexes = [models.Index(fields=["created_at"], name="request_idem_created")]
        constraints = [
            models.UniqueConstraint(fields=["organization", "user", "key_hash"], name="request_idem_unique_key"),
            models.CheckConstraint(condition=Q(status__in=RequestIdempotencyStatus.values),
                                   name="request_idem_status_valid"),
            models.CheckConstraint(condition=~Q(status="completed") | Q(response_status__isnull=False),
                                   name="request_idem_completed_has_response"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} key {self.key[:20]!r} for org {self.organization_id} ({self.status})"
