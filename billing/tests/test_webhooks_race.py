"""Two identical deliveries racing (two threads, two DB connections, real commits): one row,
processed once; both answered 200 (one of them as a duplicate)."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from django.core import mail
from django.db import connection
from django.test import Client

from billing.models import WebhookEvent
from organizations.tests.factories import MembershipFactory, OrganizationFactory

from .stripe_events import DAY, make_event, sign, hooks_stripe_settings, subscription_obj, uid  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("hooks_stripe_settings")]


def test_racing_identical_deliveries_store_one_row_and_process_once(caplog):
    caplog.set_level(logging.INFO, logger="billing.webhooks")
    org = OrganizationFactory(stripe_customer_id=uid("cus"))
    MembershipFactory(organization=org)
    t = int(time.time())
    obj = subscription_obj(sub_id=uid("sub"), customer=org.stripe_customer_id, org=org, tier="pro",
                           status="trialing", period_start=t, period_end=t + 3 * DAY, trial_start=t - 4 * DAY,
                           trial_end=t + 3 * DAY, default_payment_method=None)
    event = make_event("customer.subscription.trial_will_end", obj, created=t)  # emails: visible if run twice
    rounds = 3
    for n in range(rounds):
        event_n = dict(event, id=uid("evt"))
        body = json.dumps(event_n).encode()
        header = sign(body)
        barrier = threading.Barrier(2)
        responses: list = []
        errors: list = []

        def post() -> None:
            try:
                client = Client()
                barrier.wait(timeout=10)
                responses.append(client.post("/api/webhooks/stripe", data=body, content_type="application/json",
                                             HTTP_STRIPE_SIGNATURE=header))
            except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=post) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert not errors, errors
        assert sorted(r.status_code for r in responses) == [200, 200]
        assert sorted(r.json()["duplicate"] for r in responses) == [False, True]
        assert WebhookEvent.objects.filter(stripe_event_id=event_n["id"]).count() == 1
        assert WebhookEvent.objects.get(stripe_event_id=event_n["id"]).status == "processed"
        processed = [r for r in caplog.records
                     if r.getMessage().startswith(f"event=webhook.processed event_id={event_n['id']} ")]
        assert len(processed) == 1
    assert len(mail.outbox) == rounds  # one trial_ending email per event, never two
