"""Opening an organization's billing account: its balance on the Free plan and the welcome email.

Organizations are created in `organizations` (which may not import billing); whoever creates one
(the admin, seed_demo, a future sign-up) calls this once the org exists. Idempotent: the welcome
goes out once, when the balance row is first created, under the org row lock.
"""
from __future__ import annotations

import datetime as dt
import uuid

from django.db import transaction

from organizations.models import Organization

from ..models import CreditBalance
from ..notifications import notify_org_admins
from .balance import balance_for_update


def billing_account_open(*, organization_id: uuid.UUID, now: dt.datetime) -> CreditBalance:
    """Create the org's balance if it has none (queueing the `welcome` email on commit); return it."""
    with transaction.atomic():
        # Lock order organization -> balance: a concurrent opener waits here and then sees the row.
        Organization.objects.select_for_update().filter(pk=organization_id).values_list("pk", flat=True).first()
        is_new = not CreditBalance.objects.filter(organization_id=organization_id).exists()
        balance = balance_for_update(organization_id=organization_id, now=now)
        if is_new:
            notify_org_admins(organization_id=organization_id, kind="welcome", context={})
    return balance
