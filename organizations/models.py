"""Organizations, their members, and their API keys."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class PlanTier(models.TextChoices):
    FREE = "free", "Free"
    STARTER = "starter", "Starter"
    PRO = "pro", "Pro"
    MAX = "max", "Max"


class SubscriptionStatus(models.TextChoices):
    """Stripe's subscription statuses; a free org with no subscription is `active`."""

    ACTIVE = "active", "Active"
    TRIALING = "trialing", "Trialing"
    PAST_DUE = "past_due", "Past due"
    CANCELED = "canceled", "Canceled"
    INCOMPLETE = "incomplete", "Incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired", "Incomplete (expired)"
    UNPAID = "unpaid", "Unpaid"
    PAUSED = "paused", "Paused"


class Organization(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    # Written by billing when the Stripe customer is created; unique when set.
    stripe_customer_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    # The plan whose allowances apply now. Written only by billing services (subscription sync).
    subscription_tier = models.CharField(max_length=16, choices=PlanTier.choices, default=PlanTier.FREE)
    # Mirror of the Stripe subscription status (free orgs: active). Written by billing services.
    subscription_status = models.CharField(
        max_length=24, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    # End of the current/last trial; non-null means the org has used its one trial.
    trial_ends_at = models.DateTimeField(null=True, blank=True)
    # Set by the caller (services take `now`), never a DB/ORM default.
    created_at = models.DateTimeField()

    class Meta:
        db_table = "organizations"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(subscription_tier__in=PlanTier.values), name="org_subscription_tier_valid"
            ),
            models.CheckConstraint(
                condition=Q(subscription_status__in=SubscriptionStatus.values), name="org_subscription_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


#: Roles that may move money (checkout, top-ups, plan changes, auto top-up settings, API keys).
ADMIN_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "memberships"
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="membership_unique_user_org"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization.slug} as {self.role}"

    @property
    def is_admin(self) -> bool:
        return self.role in ADMIN_ROLES


class ApiKey(models.Model):
    """An org-scoped API key. Only a SHA-256 of the secret is stored; the secret is shown once.

    Token format: `bk_<prefix>_<secret>`; `prefix` (public, unique) finds the row, then the
    hash is compared in constant time. SHA-256 (not a slow KDF) is right for 256-bit random
    secrets and keeps the per-request check cheap.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_keys"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (bk_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
