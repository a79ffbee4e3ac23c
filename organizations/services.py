"""Writes for organizations: create orgs, add members, issue and revoke API keys."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.text import slugify

from billing_project.errors import NotFound

from .models import ApiKey, Membership, Organization, Role

TOKEN_PREFIX = "bk_"


def organization_create(*, name: str, owner=None, slug: str | None = None, now: datetime) -> Organization:
    base = slugify(slug or name)[:70] or "org"
    candidate, n = base, 1
    while Organization.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    org = Organization(name=name, slug=candidate, created_at=now)
    org.full_clean()
    with transaction.atomic():
        org.save()
        if owner is not None:
            membership_add(organization=org, user=owner, role=Role.OWNER, now=now)
    return org


def membership_add(*, organization: Organization, user, role: str, now: datetime) -> Membership:
    membership, created = Membership.objects.get_or_create(
        organization=organization, user=user, defaults={"role": role, "created_at": now}
    )
    if not created and membership.role != role:
        membership.role = role
        membership.full_clean()
        membership.save(update_fields=["role"])
    return membership


def user_create(*, email: str, password: str, first_name: str = "") -> object:
    User = get_user_model()
    user = User(username=email.lower(), email=email.lower(), first_name=first_name)
    user.set_password(password)
    user.full_clean()
    user.save()
    return user


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedApiKey:
    api_key: ApiKey
    token: str  # shown once, never stored


def api_key_create(*, organization: Organization, name: str, created_by=None, now: datetime) -> IssuedApiKey:
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(organization=organization, name=name[:100] or "API key", prefix=prefix,
                 secret_hash=_hash_secret(secret), created_by=created_by, created_at=now)
    key.full_clean()
    key.save()
    return IssuedApiKey(api_key=key, token=f"{TOKEN_PREFIX}{prefix}_{secret}")


def api_key_revoke(*, organization: Organization, key_id: int, now: datetime) -> ApiKey:
    """Revoke a key of this org (idempotent: revoking twice keeps the first revocation time)."""
    ApiKey.objects.filter(organization=organization, pk=key_id, revoked_at__isnull=True).update(revoked_at=now)
    key = ApiKey.objects.filter(organization=organization, pk=key_id).first()
    if key is None:
        raise NotFound("API key not found", code="API_KEY_NOT_FOUND")
    return key


def api_key_authenticate(*, token: str) -> ApiKey | None:
    """The active key for `token`, or None. Constant-time comparison of the secret's hash."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    try:
        prefix, secret = token[len(TOKEN_PREFIX):].split("_", 1)
    except ValueError:
        return None
    if not prefix or not secret or len(prefix) > 16:
        return None
    key = ApiKey.objects.select_related("organization").filter(prefix=prefix, revoked_at__isnull=True).first()
    expected = key.secret_hash if key is not None else _hash_secret("no-such-key")
    matches = hmac.compare_digest(expected, _hash_secret(secret))
    return key if (key is not None and matches) else None
