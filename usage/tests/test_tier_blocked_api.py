"""The orchestrator's 402 for a blocked tier records the block on the balance (first refusal of the
period only) and emails the org's admins exactly once per cooldown."""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import CreditBalance
from billing.services.balance import balance_add_topup_credits, balance_set_plan
from organizations.models import PlanTier
from organizations.tests.factories import MembershipFactory
from usage.models import BillableAction

TOKEN = "test-orchestrator-token"  # settings.test ORCHESTRATOR_SERVICE_TOKEN
UTC = dt.timezone.utc


def post(client, path, body):
    return client.post(f"/api/billing/usage/{path}", data=json.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {TOKEN}")


def blocked_pro_org(now):
    """Pro org: XL allowance (160) and buffer (16) used, 8.50 top-up credits left."""
    org = MembershipFactory(user__email="admin@blocked.test", organization__subscription_tier=PlanTier.PRO,
                            organization__name="Blocked Co").organization
    balance_set_plan(organization_id=org.pk, plan_tier="pro", period_start=dt.datetime(2026, 11, 3, tzinfo=UTC),
                     period_end=dt.datetime(2026, 12, 3, tzinfo=UTC), reset_usage=True, now=now)
    CreditBalance.objects.filter(organization=org).update(
        used_xl=160, overage_xl=16, overage_credits_owed=Decimal("240.00"), topup_purchased=Decimal("8.50"))
    return org


# Transactional: the record endpoint takes its two-round-trip fast path (outside any atomic block),
# and emails queued on commit go out through the (eager) Celery task as in production.
@pytest.mark.django_db(transaction=True)
def test_402_records_the_block_once_and_emails_the_admins_once(client, now):
    org = blocked_pro_org(now)
    body = {"orgId": str(org.pk), "userId": "u1", "actionTier": "xl"}
    r = post(client, "record", body)
    assert r.status_code == 402 and r.json()["error"]["code"] == "CREDITS_EXHAUSTED"
    b = CreditBalance.objects.get(organization=org)
    assert b.blocked_xl_at is not None and abs(b.blocked_xl_at - now) < dt.timedelta(minutes=1)
    assert (b.used_xl, b.overage_xl, b.topup_used) == (160, 16, 0)  # the refusal charged nothing
    assert [m.subject for m in mail.outbox] == ["Blocked Co: XL actions are blocked"]
    assert mail.outbox[0].to == ["admin@blocked.test"]
    first_blocked, version = b.blocked_xl_at, b.version

    # Later refusals: no write at all on the hot path (only the locking read), no email.
    with CaptureQueriesContext(connection) as queries:
        assert post(client, "record", body).status_code == 402
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert writes == []
    assert post(client, "record", {**body, "userId": "u2"}).status_code == 402
    b.refresh_from_db()
    assert (b.blocked_xl_at, b.version) == (first_blocked, version)
    assert len(mail.outbox) == 1 and not BillableAction.objects.exists()

    # Another tier is not blocked and says nothing about XL.
    assert post(client, "record", {**body, "actionTier": "small"}).status_code == 201
    b.refresh_from_db()
    assert b.blocked_xl_at == first_blocked

    # A purchase unblocks; the next XL action is accepted and the block is gone.
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("500.00"), now=now)
    r = post(client, "record", body)
    assert r.status_code == 201 and r.json()["paidFrom"] == "credits"
    b.refresh_from_db()
    assert b.blocked_xl_at is None


@pytest.mark.django_db(transaction=True)
def test_batch_402_records_the_block_and_emails_once(client, now):
    org = blocked_pro_org(now)
    actions = [{"userId": "u", "actionTier": t} for t in ("xl", "small", "xl")]
    r = post(client, "record-batch", {"orgId": str(org.pk), "actions": actions})
    assert r.status_code == 200, r.content
    assert [i["status"] for i in r.json()["results"]] == [402, 201, 402]
    b = CreditBalance.objects.get(organization=org)
    assert b.blocked_xl_at is not None and b.used_small == 1
    r = post(client, "record-batch", {"orgId": str(org.pk), "actions": actions[:1]})
    assert [i["status"] for i in r.json()["results"]] == [402]
    assert [m.subject for m in mail.outbox] == ["Blocked Co: XL actions are blocked"]


@pytest.mark.django_db
def test_402_inside_the_atomic_path_records_the_block_too(client, now, django_capture_on_commit_callbacks):
    org = blocked_pro_org(now)
    with django_capture_on_commit_callbacks(execute=True):
        r = post(client, "record", {"orgId": str(org.pk), "userId": "u", "actionTier": "xl",
                                    "idempotencyKey": "k-1"})
    assert r.status_code == 402
    assert CreditBalance.objects.get(organization=org).blocked_xl_at is not None
    assert len(mail.outbox) == 1
