"""Extend trial: gateway + simulator (`trial_end` on subscription update, no proration) and the
admin action with its intermediate form; Stripe is called outside any transaction, then
subscription_sync. Simulator over real HTTP via the SDK; webhooks are its own signed events."""
from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from billing import stripe_gateway as gw
from billing.models import CreditBalance, Subscription, WebhookEvent
from billing.services.plan_changes import checkout_start
from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from tests import stripe_calls

from .stripe_events import replay_sim_events

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DAY = 86400


@pytest.fixture
def trialing(stripe_settings, client):
    org = OrganizationFactory()
    MembershipFactory(organization=org)
    start = checkout_start(organization=org, plan_tier="pro", email="owner@example.test", now=timezone.now())
    cs = stripe_settings.sim.complete_checkout(start["sessionId"], card="4242424242424242")
    seen: set[str] = set()
    replay_sim_events(client, seen)
    return org, cs["subscription"], seen


def test_gateway_extend_trial_moves_trial_end_and_emits_update(trialing, stripe_settings):
    org, sub_id, _ = trialing
    before = gw.subscription_retrieve(sub_id).obj
    target = before["trial_end"] + 5 * DAY
    after = gw.subscription_extend_trial(subscription_id=sub_id, trial_end=target, idempotency_key="t-extend-1").obj
    assert after["status"] == "trialing" and after["trial_end"] == target
    assert after["items"]["data"][0]["current_period_end"] == target
    update = stripe_calls.event_list(types=["customer.subscription.updated"], limit=1)[0]
    assert update["data"]["object"]["trial_end"] == target
    assert update["data"]["previous_attributes"]["trial_end"] == before["trial_end"]
    # Same key, same request: replayed, not applied twice.
    again = gw.subscription_extend_trial(subscription_id=sub_id, trial_end=target, idempotency_key="t-extend-1").obj
    assert again["trial_end"] == target
    with pytest.raises(Exception) as excinfo:
        gw.subscription_extend_trial(subscription_id=sub_id, trial_end=stripe_settings.sim.now() - 10,
                                     idempotency_key="t-extend-past")
    assert getattr(excinfo.value, "code", "") == "STRIPE_INVALID_REQUEST"
    # The first invoice comes at the new trial end, not the old one.
    stripe_settings.sim.advance_clock(7 * DAY + 60)
    assert gw.subscription_retrieve(sub_id).obj["status"] == "trialing"
    stripe_settings.sim.advance_clock(5 * DAY)
    assert gw.subscription_retrieve(sub_id).obj["status"] == "active"


def test_admin_extend_trial_action_with_intermediate_form(trialing, client, stripe_settings):
    org, sub_id, seen = trialing
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    old_end = sub.trial_end
    staff = UserFactory(username="staff-trial@example.test", is_staff=True, is_superuser=True)
    client.force_login(staff)
    url = reverse("admin:billing_subscription_changelist")
    data = {"action": "extend_trial", "_selected_action": [sub.pk]}

    resp = client.post(url, data)  # the intermediate form
    assert resp.status_code == 200 and b"Extend trial" in resp.content and b'name="days"' in resp.content
    resp = client.post(url, {**data, "apply": "1", "days": "31"})  # out of range: the form again, nothing done
    assert resp.status_code == 200 and b"Ensure this value is less than or equal to 30" in resp.content
    assert gw.subscription_retrieve(sub_id).obj["trial_end"] == int(old_end.timestamp())

    resp = client.post(url, {**data, "apply": "1", "days": "10"}, follow=True)
    assert resp.status_code == 200 and b"Trial extended by 10 days: 1 done." in resp.content
    new_end = old_end + dt.timedelta(days=10)
    assert gw.subscription_retrieve(sub_id).obj["trial_end"] == int(new_end.timestamp())
    sub.refresh_from_db()
    org.refresh_from_db()
    assert sub.trial_end == new_end and sub.current_period_end == new_end and org.trial_ends_at == new_end
    assert CreditBalance.objects.get(organization_id=org.pk).period_end == new_end
    # The webhook for it (and replays) agree.
    replay_sim_events(client, seen)
    sub.refresh_from_db()
    assert sub.trial_end == new_end and not WebhookEvent.objects.filter(status__in=["failed", "pending"]).exists()

    # Not trialing any more: refused with a message, Stripe untouched.
    gw.subscription_cancel(subscription_id=sub_id, idempotency_key="t-cancel-now")
    replay_sim_events(client, seen)
    resp = client.post(url, {**data, "apply": "1", "days": "3"}, follow=True)
    assert b"NOT_TRIALING" in resp.content


def test_non_staff_cannot_extend(trialing, client):
    _, sub_id, _ = trialing
    sub = Subscription.objects.get(stripe_subscription_id=sub_id)
    client.force_login(UserFactory(username="plain@example.test"))
    resp = client.post(reverse("admin:billing_subscription_changelist"),
                       {"action": "extend_trial", "_selected_action": [sub.pk], "apply": "1", "days": "5"})
    assert resp.status_code == 302 and "/login/" in resp["Location"]
    assert gw.subscription_retrieve(sub_id).obj["trial_end"] == int(sub.trial_end.timestamp())
