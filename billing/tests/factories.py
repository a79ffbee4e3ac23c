"""factory-boy factories for billing's models (organizations' own are in organizations/tests/factories.py).

Each builds a valid row with fixed times (FIXED_CREATED) unless the test passes its own; money rows
follow the models' units (integer cents, exact 2-place credits). Rows that carry money rules a service
owns (balances, grants, billable actions) are made through that service, not here.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import factory

from billing.models import (
    AllowanceChange,
    AutoTopupSettingsChange,
    CreditPurchase,
    Invoice,
    Subscription,
    WebhookEvent,
)
from organizations.tests.factories import FIXED_CREATED, OrganizationFactory


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    organization = factory.SubFactory(OrganizationFactory)
    stripe_subscription_id = factory.Sequence(lambda n: f"sub_factory_{n}")
    stripe_customer_id = factory.LazyAttribute(lambda o: o.organization.stripe_customer_id or f"cus_factory_{o.organization.pk}")
    plan_tier = "pro"
    status = "active"
    current_period_start = FIXED_CREATED
    current_period_end = factory.LazyAttribute(lambda o: o.current_period_start + dt.timedelta(days=30))
    created_at = FIXED_CREATED
    updated_at = factory.SelfAttribute("created_at")


class InvoiceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Invoice

    stripe_invoice_id = factory.Sequence(lambda n: f"in_factory_{n}")
    organization = factory.SubFactory(OrganizationFactory)
    subscription = None
    amount_due_cents = 9900
    amount_paid_cents = factory.LazyAttribute(lambda o: o.amount_due_cents if o.status == "paid" else 0)
    status = "paid"
    created_at = FIXED_CREATED
    updated_at = factory.SelfAttribute("created_at")


class WebhookEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WebhookEvent

    stripe_event_id = factory.Sequence(lambda n: f"evt_factory_{n}")
    type = "invoice.paid"
    payload = factory.LazyAttribute(lambda o: {"id": o.stripe_event_id})
    status = "pending"
    received_at = FIXED_CREATED


class CreditPurchaseFactory(factory.django.DjangoModelFactory):
    """A manual saved-card purchase of one pack (500 credits for 2000 cents), pending."""

    class Meta:
        model = CreditPurchase

    organization = factory.SubFactory(OrganizationFactory)
    kind = "manual"
    method = "saved_card"
    packs = 1
    credits = Decimal("500.00")
    amount_cents = 2000
    status = "pending"
    created_at = FIXED_CREATED


class AutoTopupSettingsChangeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AutoTopupSettingsChange

    organization = factory.SubFactory(OrganizationFactory)
    enabled = True
    threshold = Decimal("50.00")
    packs = 1
    monthly_cap_packs = 10
    reason = "admin"
    created_at = FIXED_CREATED


class AllowanceChangeFactory(factory.django.DjangoModelFactory):
    """An upgrade starter -> pro ten days into a 30-day period, with pro's prorated allowances."""

    class Meta:
        model = AllowanceChange

    subscription = factory.SubFactory(SubscriptionFactory)
    organization = factory.SelfAttribute("subscription.organization")
    period_start = FIXED_CREATED
    period_end = factory.LazyAttribute(lambda o: o.period_start + dt.timedelta(days=30))
    from_plan_tier = "starter"
    to_plan_tier = "pro"
    effective_at = factory.LazyAttribute(lambda o: o.period_start + dt.timedelta(days=10))
    included_small = 3000
    included_medium = 700
    included_large = 150
    included_xl = 60
    created_at = FIXED_CREATED
