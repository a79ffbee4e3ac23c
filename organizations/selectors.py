"""Reads for organizations, and the access rule every org-scoped page and endpoint uses.

Non-members get 404 (an org you don't belong to does not exist for you); members without an
admin role get 403 on money-moving actions.
"""
from __future__ import annotations

import uuid

from django.core.validators import slug_re
from django.db.models import QuerySet

from billing_project.errors import NotFound, PermissionDeniedError

from .models import ADMIN_ROLES, ApiKey, Membership, Organization


def _is_slug(ref: object) -> bool:
    """Only a well-formed slug goes to the database (a lone surrogate would fail to encode: a 500)."""
    return slug_re.fullmatch(str(ref)) is not None


def memberships_for_user(*, user) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization").order_by("organization__name")


def membership_for(*, user, org_ref: str | None = None, require_admin: bool = False) -> Membership:
    """Resolve the user's membership in the org named by `org_ref` (UUID or slug), or the
    user's first org when `org_ref` is empty. Raises NotFound / PermissionDeniedError."""
    if user is None or not user.is_authenticated:
        raise NotFound("organization not found", code="ORG_NOT_FOUND")
    qs = memberships_for_user(user=user)
    if org_ref:
        try:
            membership = qs.filter(organization_id=uuid.UUID(str(org_ref))).first()
        except ValueError:
            membership = qs.filter(organization__slug=str(org_ref)).first() if _is_slug(org_ref) else None
    else:
        membership = qs.first()
    if membership is None:
        raise NotFound("organization not found", code="ORG_NOT_FOUND")
    if require_admin and membership.role not in ADMIN_ROLES:
        raise PermissionDeniedError("only owners and admins of this organization may do that",
                                    code="FORBIDDEN_ROLE")
    return membership


def api_keys_for_org(*, organization: Organization) -> QuerySet:
    """The org's API keys, newest first, active before revoked (for the API keys page)."""
    return ApiKey.objects.filter(organization=organization).select_related("created_by").order_by(
        "revoked_at", "-created_at")
