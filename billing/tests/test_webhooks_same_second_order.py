"""Out-of-order pairs: events of the SAME second (Stripe's `created` is whole seconds,
so ties are common: a cancel emits updated + deleted together) and a trial_will_end arriving after
the subscription ended. Signed events through the real endpoint, MariaDB."""
from __future__ import annotations

import time

import pytest
from django.core import mail

from billing.models import CreditBalance, Subscription

from .stripe_events import (  # noqa: F401 - fixtures are used by name
    DAY,
    deliver,
    hooks_stripe_settings,
    make_event,
    org,
    subscription_obj,
    uid,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hooks_stripe_settings")]


def sub_event(org, event_type, *, sub_id, created, **kw):
    kw.setdefault("period_start", created)
    kw.setdefault("period_end", kw["period_start"] + 30 * DAY)
    return make_event(event_type, subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, **kw),
                      created=created)


def test_an_update_of_the_same_second_never_revives_a_deleted_subscription(org, deliver):
    t, sub_id = int(time.time()) - 60, uid("sub")
    deliver(sub_event(org, "customer.subscription.created", sub_id=sub_id, created=t, tier="pro", period_start=t))
    # Stripe emits both at the same second; the worker happens to run the deletion first.
    updated = sub_event(org, "customer.subscription.updated", sub_id=sub_id, created=t + 5, tier="pro",
                        period_start=t, cancel_at_period_end=True)
    deleted = sub_event(org, "customer.subscription.deleted", sub_id=sub_id, created=t + 5, tier="pro",
                        period_start=t, status="canceled", canceled_at=t + 5, ended_at=t + 5)
    deliver(deleted)
    deliver(updated)
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    org.refresh_from_db()
    assert (sub.status, sub.ended_at is not None) == ("canceled", True)
    assert (org.subscription_tier, org.subscription_status) == ("free", "active")
    assert CreditBalance.objects.get(organization_id=org.pk).plan_tier == "free"


def test_trial_will_end_after_the_subscription_ended_sends_no_trial_ending_email(org, deliver):
    t, sub_id = int(time.time()) - 60, uid("sub")
    kw = dict(sub_id=sub_id, tier="pro", period_start=t - 4 * DAY, period_end=t + 3 * DAY,
              trial_start=t - 4 * DAY, trial_end=t + 3 * DAY, default_payment_method=None)
    deliver(sub_event(org, "customer.subscription.created", created=t - 4 * DAY, status="trialing", **kw))
    deliver(sub_event(org, "customer.subscription.deleted", created=t, status="canceled", canceled_at=t,
                      ended_at=t, **kw))
    mail.outbox.clear()
    # The trial_will_end Stripe sent before the cancel arrives late.
    deliver(sub_event(org, "customer.subscription.trial_will_end", created=t - 1, status="trialing", **kw))
    assert [m.subject for m in mail.outbox if "trial ends" in m.subject.lower()] == []
    org.refresh_from_db()
    assert org.subscription_tier == "free"


def test_invoice_created_of_the_same_second_never_turns_a_finalized_invoice_back_to_draft(org, deliver):
    from billing.models import Invoice

    from .stripe_events import invoice_obj

    t, sub_id, inv_id = int(time.time()) - 60, uid("sub"), uid("in")
    deliver(sub_event(org, "customer.subscription.created", sub_id=sub_id, created=t - DAY, tier="pro",
                      period_start=t - DAY))
    common = dict(inv_id=inv_id, customer=org.stripe_customer_id, sub_id=sub_id, amount_due=9900,
                  period_start=t, period_end=t + 30 * DAY, created=t)
    draft = invoice_obj(status="draft", **common)
    draft.update(hosted_invoice_url=None, invoice_pdf=None)  # Stripe: no hosted page before finalization
    # An invoice charged at once is created, finalized and fails in one second; the worker runs
    # invoice.created last.
    deliver(make_event("invoice.finalized", invoice_obj(status="open", **common), created=t))
    deliver(make_event("invoice.payment_failed", invoice_obj(status="open", **common), created=t))
    deliver(make_event("invoice.created", draft, created=t))
    inv = Invoice.objects.get(stripe_invoice_id=inv_id)
    assert inv.status == "open"
    assert inv.hosted_invoice_url.endswith(inv_id) and inv.invoice_pdf.endswith(".pdf")
