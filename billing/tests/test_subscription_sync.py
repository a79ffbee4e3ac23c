"""subscription_sync: the one writer of plan state from Stripe subscription objects."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail

from billing.errors import BillingError
from billing.models import CreditBalance, Subscription
from billing.plans import PLANS
from billing.services.balance import balance_add_topup_credits, balance_charge
from billing.services.subscription_sync import plan_tier_for_price, subscription_sync
from organizations.models import Organization

from .stripe_events import DAY, PRICES, hooks_stripe_settings, org, subscription_obj, ts, uid  # noqa: F401 - fixtures are used by name

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hooks_stripe_settings")]


def balance_of(org) -> CreditBalance:
    return CreditBalance.objects.get(organization_id=org.pk)


def sync(obj, now, created=None, capture=None):
    return subscription_sync(stripe_subscription=obj, now=now, event_created=created)


def test_new_trialing_subscription_puts_org_on_plan_and_marks_trial(org, now, django_capture_on_commit_callbacks):
    start, trial_end = ts(now), ts(now) + 7 * DAY
    obj = subscription_obj(sub_id=uid("sub"), customer=org.stripe_customer_id, org=org, tier="pro", status="trialing",
                           period_start=start, period_end=trial_end, trial_start=start, trial_end=trial_end)
    sub = sync(obj, now, created=start)
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("pro", "trialing")
    assert org.trial_ends_at == dt.datetime.fromtimestamp(trial_end, tz=dt.timezone.utc)
    assert sub.plan_tier == "pro" and sub.stripe_price_id == PRICES["pro"] and sub.last_event_created == start
    bal = balance_of(org)
    assert bal.plan_tier == "pro" and bal.included_small == PLANS["pro"].included["small"]
    assert bal.period_start == sub.current_period_start and bal.period_end == sub.current_period_end


def test_same_object_twice_is_idempotent_and_keeps_usage(org, now):
    obj = subscription_obj(sub_id=uid("sub"), customer=org.stripe_customer_id, org=org, tier="starter",
                           period_start=ts(now), period_end=ts(now) + 30 * DAY)
    sync(obj, now, created=ts(now))
    balance_charge(organization_id=org.pk, tier="small", now=now)
    balance_charge(organization_id=org.pk, tier="small", now=now)
    sync(obj, now, created=ts(now))
    sync(obj, now)  # a fresh API read of the same state
    assert Subscription.objects.filter(organization=org).count() == 1
    assert balance_of(org).used_small == 2


def test_new_period_resets_usage_and_rolls_topup_credits_over(org, now):
    sub_id = uid("sub")
    p1 = ts(now)
    sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="starter",
                          period_start=p1, period_end=p1 + 30 * DAY), now, created=p1)
    balance_charge(organization_id=org.pk, tier="medium", now=now)
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("500.00"), now=now)
    later = now + dt.timedelta(days=30)
    sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="starter",
                          period_start=p1 + 30 * DAY, period_end=p1 + 60 * DAY), later, created=p1 + 30 * DAY)
    bal = balance_of(org)
    assert bal.used_medium == 0
    assert bal.topup_purchased - bal.topup_used == Decimal("500.00")
    assert bal.period_start == dt.datetime.fromtimestamp(p1 + 30 * DAY, tz=dt.timezone.utc)


def test_upgrade_in_same_period_raises_allowances_at_once_keeping_usage(org, now):
    sub_id, p1 = uid("sub"), ts(now)
    sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="starter",
                          period_start=p1, period_end=p1 + 30 * DAY), now, created=p1)
    balance_charge(organization_id=org.pk, tier="large", now=now)
    sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="max",
                          period_start=p1, period_end=p1 + 30 * DAY), now, created=p1 + 100)
    bal = balance_of(org)
    org.refresh_from_db()
    assert org.subscription_tier == "max"
    assert bal.included_large == PLANS["max"].included["large"] and bal.used_large == 1


def test_older_event_never_overwrites_newer_state(org, now):
    sub_id, p1 = uid("sub"), ts(now)
    newer = subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro",
                             period_start=p1, period_end=p1 + 30 * DAY)
    older = subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="starter",
                             status="past_due", period_start=p1, period_end=p1 + 30 * DAY)
    sync(newer, now, created=p1 + 50)
    sub = sync(older, now, created=p1 + 10)
    org.refresh_from_db()
    assert (sub.plan_tier, sub.status, sub.last_event_created) == ("pro", "active", p1 + 50)
    assert (org.subscription_tier, org.subscription_status) == ("pro", "active")
    assert balance_of(org).plan_tier == "pro"


def test_canceled_subscription_downgrades_to_free_and_emails(org, now, django_capture_on_commit_callbacks):
    sub_id, p1 = uid("sub"), ts(now)
    sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro",
                          period_start=p1, period_end=p1 + 30 * DAY), now, created=p1)
    with django_capture_on_commit_callbacks(execute=True):
        sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro", status="canceled",
                              period_start=p1, period_end=p1 + 30 * DAY, canceled_at=p1 + 99, ended_at=p1 + 99),
             now, created=p1 + 99)
    org.refresh_from_db()
    assert (org.subscription_tier, org.subscription_status) == ("free", "active")
    assert balance_of(org).plan_tier == "free" and balance_of(org).included_xl == PLANS["free"].included["xl"]
    assert [m.subject for m in mail.outbox if "downgraded" in m.subject.lower() or "free" in m.subject.lower()]
    assert len(mail.outbox) == 1


def test_trial_ending_without_card_goes_free_with_trial_ended_email(org, now, django_capture_on_commit_callbacks):
    sub_id, p1 = uid("sub"), ts(now)
    trial = dict(period_start=p1, period_end=p1 + 7 * DAY, trial_start=p1, trial_end=p1 + 7 * DAY,
                 default_payment_method=None)
    sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, status="trialing", **trial),
         now, created=p1)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        sync(subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, status="canceled",
                              ended_at=p1 + 7 * DAY, canceled_at=p1 + 7 * DAY, **trial), now, created=p1 + 7 * DAY)
    org.refresh_from_db()
    assert org.subscription_tier == "free" and org.trial_ends_at is not None
    assert len(callbacks) == 1 and len(mail.outbox) == 1
    assert "trial" in (mail.outbox[0].subject + mail.outbox[0].body).lower()


def test_cancel_at_period_end_keeps_plan_and_emails_once(org, now, django_capture_on_commit_callbacks):
    sub_id, p1 = uid("sub"), ts(now)
    base = dict(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro", period_start=p1,
                period_end=p1 + 30 * DAY)
    sync(subscription_obj(**base), now, created=p1)
    with django_capture_on_commit_callbacks(execute=True):
        sync(subscription_obj(**base, cancel_at_period_end=True), now, created=p1 + 5)
        sync(subscription_obj(**base, cancel_at_period_end=True), now, created=p1 + 6)
    org.refresh_from_db()
    assert org.subscription_tier == "pro"
    assert Subscription.objects.get(stripe_subscription_id=sub_id).cancel_at_period_end is True
    assert len(mail.outbox) == 1


def test_org_found_by_customer_when_metadata_is_missing(org, now):
    sub = sync(subscription_obj(sub_id=uid("sub"), customer=org.stripe_customer_id, org=None, tier="starter",
                                period_start=ts(now), period_end=ts(now) + 30 * DAY), now)
    assert sub.organization_id == org.pk
    assert Organization.objects.get(pk=org.pk).subscription_tier == "starter"


def test_unknown_customer_is_refused(now):
    with pytest.raises(BillingError) as exc:
        sync(subscription_obj(sub_id=uid("sub"), customer="cus_nobody", tier="pro", period_start=ts(now),
                              period_end=ts(now) + DAY), now)
    assert exc.value.code == "ORG_NOT_FOUND"
    assert not Subscription.objects.filter(stripe_customer_id="cus_nobody").exists()


def test_unknown_price_is_refused_but_lookup_key_maps(org, now):
    obj = subscription_obj(sub_id=uid("sub"), customer=org.stripe_customer_id, tier="max", price_id="price_other",
                           lookup_key="plan_max", period_start=ts(now), period_end=ts(now) + DAY)
    obj["metadata"] = {"orgId": str(org.pk)}
    assert sync(obj, now).plan_tier == "max"
    obj2 = subscription_obj(sub_id=uid("sub"), customer=org.stripe_customer_id, tier="max", price_id="price_x",
                            lookup_key="gold", period_start=ts(now), period_end=ts(now) + DAY)
    obj2["metadata"] = {}
    with pytest.raises(BillingError) as exc:
        sync(obj2, now)
    assert exc.value.code == "UNKNOWN_PRICE"
    assert plan_tier_for_price(price=PRICES["starter"]) == "starter"


def test_a_live_subscription_survives_the_end_of_an_older_one(org, now):
    p1 = ts(now)
    old_id, new_id = uid("sub"), uid("sub")
    sync(subscription_obj(sub_id=old_id, customer=org.stripe_customer_id, org=org, tier="starter",
                          period_start=p1, period_end=p1 + 30 * DAY), now, created=p1)
    sync(subscription_obj(sub_id=new_id, customer=org.stripe_customer_id, org=org, tier="max",
                          period_start=p1 + 10, period_end=p1 + 30 * DAY), now, created=p1 + 10)
    sync(subscription_obj(sub_id=old_id, customer=org.stripe_customer_id, org=org, tier="starter",
                          status="canceled", period_start=p1, period_end=p1 + 30 * DAY, ended_at=p1 + 20),
         now, created=p1 + 20)
    org.refresh_from_db()
    assert org.subscription_tier == "max"


def test_card_on_the_subscription_is_mirrored_and_cleared(org, now):
    sub_id = uid("sub")
    obj = subscription_obj(sub_id=sub_id, customer=org.stripe_customer_id, org=org, tier="pro", status="trialing",
                           period_start=ts(now), period_end=ts(now) + 7 * DAY)
    assert sync({**obj, "default_payment_method": None}, now, created=ts(now)).default_payment_method_id == ""
    with_card = {**obj, "default_payment_method": {"id": "pm_card_1", "object": "payment_method"}}
    assert sync(with_card, now, created=ts(now) + 1).default_payment_method_id == "pm_card_1"
    assert sync({**obj, "default_payment_method": None}, now, created=ts(now) + 2).default_payment_method_id == ""
