"""One object of every model registered in the admin, for the admin render tests."""
from __future__ import annotations

import datetime as dt

from decimal import Decimal

from billing.models import CreditBalance
from billing.services.grants import credit_grant_create
from billing.tests.factories import (
    AllowanceChangeFactory,
    AutoTopupSettingsChangeFactory,
    InvoiceFactory,
    SubscriptionFactory,
    WebhookEventFactory,
)
from usage.services import action_record
from organizations.models import ApiKey
from organizations.tests.factories import MembershipFactory, OrganizationFactory


def make_one_of_each(*, now: dt.datetime) -> list:
    org = OrganizationFactory(name="Admin Org", slug="admin-org", stripe_customer_id="cus_admin_1")
    membership = MembershipFactory(organization=org)
    key = ApiKey.objects.create(organization=org, name="ci", prefix="adminpfx", secret_hash="0" * 64,
                                created_at=now)
    sub = SubscriptionFactory(organization=org, stripe_subscription_id="sub_admin_1", stripe_price_id="price_pro",
                              current_period_start=now, created_at=now)
    invoice = InvoiceFactory(stripe_invoice_id="in_admin_1", organization=org, subscription=sub, created_at=now)
    event = WebhookEventFactory(stripe_event_id="evt_admin_1", status="failed", error="boom", received_at=now)
    action_id = action_record(organization_id=org.pk, user_id="u1", tier="small", now=now).action_id
    grant = credit_grant_create(organization_id=org.pk, credits=Decimal("5.00"), reason="welcome",
                                granted_by=membership.user, now=now)
    change = AutoTopupSettingsChangeFactory(organization=org, created_at=now)
    allowance = AllowanceChangeFactory(subscription=sub, period_start=now, created_at=now)
    from usage.models import BillableAction

    objs = [org, membership, key, sub, invoice, event, CreditBalance.objects.get(organization=org),
            BillableAction.objects.get(pk=action_id), grant, change, allowance]
    return objs
