"""One object of every model registered in the admin, for the admin render tests."""
from __future__ import annotations

import datetime as dt

from decimal import Decimal

from billing.models import AllowanceChange, AutoTopupSettingsChange, CreditBalance, Invoice, Subscription, WebhookEvent
from billing.services.grants import credit_grant_create
from usage.services import action_record
from organizations.models import ApiKey
from organizations.tests.factories import MembershipFactory, OrganizationFactory


def make_one_of_each(*, now: dt.datetime) -> list:
    org = OrganizationFactory(name="Admin Org", slug="admin-org", stripe_customer_id="cus_admin_1")
    membership = MembershipFactory(organization=org)
    key = ApiKey.objects.create(organization=org, name="ci", prefix="adminpfx", secret_hash="0" * 64,
                                created_at=now)
    sub = Subscription.objects.create(
        organization=org, stripe_subscription_id="sub_admin_1", stripe_customer_id="cus_admin_1",
        stripe_price_id="price_pro", plan_tier="pro", status="active", current_period_start=now,
        current_period_end=now + dt.timedelta(days=30), created_at=now, updated_at=now)
    invoice = Invoice.objects.create(
        stripe_invoice_id="in_admin_1", organization=org, subscription=sub, amount_due_cents=9900,
        amount_paid_cents=9900, status="paid", created_at=now, updated_at=now)
    event = WebhookEvent.objects.create(
        stripe_event_id="evt_admin_1", type="invoice.paid", payload={"id": "evt_admin_1"}, status="failed",
        error="boom", received_at=now)
    action_id = action_record(organization_id=org.pk, user_id="u1", tier="small", now=now).action_id
    grant = credit_grant_create(organization_id=org.pk, credits=Decimal("5.00"), reason="welcome",
                                granted_by=membership.user, now=now)
    change = AutoTopupSettingsChange.objects.create(organization=org, enabled=True, threshold=Decimal("50.00"),
                                                    packs=1, monthly_cap_packs=10, reason="admin", created_at=now)
    allowance = AllowanceChange.objects.create(
        organization=org, subscription=sub, period_start=now, period_end=now + dt.timedelta(days=30),
        from_plan_tier="starter", to_plan_tier="pro", effective_at=now + dt.timedelta(days=10), included_small=3000,
        included_medium=700, included_large=150, included_xl=60, created_at=now)
    from usage.models import BillableAction

    objs = [org, membership, key, sub, invoice, event, CreditBalance.objects.get(organization=org),
            BillableAction.objects.get(pk=action_id), grant, change, allowance]
    return objs
