"""The daily health summary: failed webhooks (7 days), stuck purchases and drift, emailed to staff."""
from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from django.conf import settings
from django.core import mail
from django.core.management import call_command

from billing.models import CreditBalance
from billing.tests.factories import CreditPurchaseFactory, WebhookEventFactory
from organizations.tests.factories import OrganizationFactory
from usage.services import action_record
from usage.services_reconcile import health_summary_daily_send
from usage.tasks_health import send_daily_health_summary

pytestmark = pytest.mark.django_db


def make_troubled(now):
    org = OrganizationFactory(slug="troubled")
    action_record(organization_id=org.pk, user_id="u", tier="small", now=now)
    CreditBalance.objects.filter(organization=org).update(used_small=5)          # drift
    WebhookEventFactory(stripe_event_id="evt_failed_recent", status="failed", error="KeyError: x",
                        received_at=now - dt.timedelta(days=2))
    WebhookEventFactory(stripe_event_id="evt_failed_old", status="failed", error="old",
                        received_at=now - dt.timedelta(days=9))
    WebhookEventFactory(stripe_event_id="evt_pending_long", type="customer.subscription.updated", status="pending",
                        received_at=now - dt.timedelta(hours=2))
    CreditPurchaseFactory(organization=org, status="started", created_at=now - dt.timedelta(hours=3),
                          started_at=now - dt.timedelta(hours=3))
    CreditPurchaseFactory(organization=org, status="pending", created_at=now - dt.timedelta(minutes=2))  # young
    return org


@pytest.fixture
def troubled(now):
    return make_troubled(now)


def test_daily_summary_is_emailed_with_failures_stuck_and_drift(troubled, now, settings):
    settings.BILLING_ADMIN_EMAIL = "ops@example.test"
    summary = health_summary_daily_send(now=now)
    assert [w["stripeEventId"] for w in summary.failed_webhooks] == ["evt_failed_recent"]
    assert [w["stripeEventId"] for w in summary.stuck_webhooks] == ["evt_pending_long"]
    assert [p["status"] for p in summary.stuck_purchases] == ["started"]
    assert (summary.drifted_orgs, summary.drift_orgs) == (1, ["troubled"])
    assert len(mail.outbox) == 1
    msg = mail.outbox[0]
    assert msg.to == ["ops@example.test"]
    assert "ATTENTION" in msg.subject and "1 failed webhooks" in msg.subject and "1 stuck purchases" in msg.subject
    assert "evt_failed_recent" in msg.body and "evt_failed_old" not in msg.body and "troubled" in msg.body


def test_the_beat_task_sends_an_ok_summary_on_a_healthy_database(now, settings):
    settings.BILLING_ADMIN_EMAIL = "ops@example.test"
    org = OrganizationFactory(slug="fine")
    action_record(organization_id=org.pk, user_id="u", tier="small", now=now)
    result = send_daily_health_summary.delay().get()
    assert result == {"healthy": True, "failedWebhooks": 0, "stuckPurchases": 0, "driftedOrgs": 0}
    assert len(mail.outbox) == 1 and "OK" in mail.outbox[0].subject


def test_the_task_is_scheduled_daily():
    entry = settings.CELERY_BEAT_SCHEDULE["billing-daily-health"]
    assert entry["task"] == send_daily_health_summary.name and entry["schedule"] == 86400.0


def test_no_admin_email_configured_sends_nothing(troubled, now, settings):
    settings.BILLING_ADMIN_EMAIL = ""
    health_summary_daily_send(now=now)
    assert mail.outbox == []


def test_reconcile_stripe_lists_stuck_purchases_and_webhooks():
    from django.utils import timezone

    make_troubled(timezone.now())  # the command reads the clock
    out = io.StringIO()
    with pytest.raises(SystemExit) as exc:
        call_command("reconcile", "--fix", "--stripe", "--json", stdout=out, stderr=io.StringIO())
    assert exc.value.code == 1  # the drift is fixed, but stuck work remains
    doc = json.loads(out.getvalue())
    assert doc["fixedOrgs"] == ["troubled"]
    stripe = doc["stripe"]
    assert [p["status"] for p in stripe["stuckPurchases"]] == ["started"]
    assert [w["stripeEventId"] for w in stripe["failedWebhooks"]] == ["evt_failed_recent"]
    assert [w["stripeEventId"] for w in stripe["stuckWebhooks"]] == ["evt_pending_long"]
    assert stripe["checkedSubscriptions"] == 0
