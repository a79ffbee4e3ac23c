"""usage.services: recording actions, idempotency, batches (MariaDB)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from billing.errors import BillingError
from billing.models import CreditBalance
from billing.services.balance import balance_add_topup_credits
from billing_project.errors import InvalidRequest
from organizations.models import PlanTier
from organizations.tests.factories import OrganizationFactory
from usage.models import BillableAction
from usage.services import ActionInput, action_check, action_record, actions_record_batch

pytestmark = pytest.mark.django_db


def record(org, tier="small", now=None, **kw):
    return action_record(organization_id=org.pk, user_id="u1", tier=tier, now=now, **kw)


def test_record_writes_one_row_matching_the_charge(now):
    org = OrganizationFactory()
    r = record(org, "large", now, agent_id="a1", agent_name="Agent", action_key="k", description="d",
               metadata={"x": [1, 2]})
    row = BillableAction.objects.get()
    assert r.created and r.action_id == row.pk and r.body["actionId"] == row.pk
    assert (row.tier, row.paid_from, row.credits_charged, row.payout_cents) == ("large", "plan", 0, 10)
    assert (row.agent_id, row.agent_name, row.action_key, row.description, row.metadata) == (
        "a1", "Agent", "k", "d", {"x": [1, 2]})
    b = CreditBalance.objects.get(organization=org)
    assert (row.period_start, row.period_end, row.created_at) == (b.period_start, b.period_end, now)
    assert r.body == {"success": True, "actionId": row.pk, "creditsUsed": "0.00", "paidFrom": "plan",
                      "remainingCredits": {"small": 10, "medium": 4, "large": 1, "xl": 1}, "topupRemaining": "0.00"}


def test_idempotent_replay_returns_the_first_body_and_records_nothing(now):
    org = OrganizationFactory()
    first = record(org, "xl", now, idempotency_key="k-1")
    record(org, "small", now)
    again = record(org, "xl", now, idempotency_key="k-1")
    assert not again.created and again.body == first.body and again.action_id == first.action_id
    assert BillableAction.objects.count() == 2
    b = CreditBalance.objects.get(organization=org)
    assert (b.used_xl, b.overage_xl) == (1, 0)
    # Same key, another org: a different action.
    other = OrganizationFactory()
    assert record(other, "xl", now, idempotency_key="k-1").created


def test_replay_after_exhaustion_still_answers_the_first_body(now, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()
    first = record(org, "xl", now, idempotency_key="only")
    with pytest.raises(BillingError):
        record(org, "xl", now, idempotency_key="second")
    assert record(org, "xl", now, idempotency_key="only").body == first.body
    assert BillableAction.objects.count() == 1


def test_refused_action_records_nothing(now, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()
    record(org, "xl", now)
    with pytest.raises(BillingError) as exc:
        record(org, "xl", now)
    assert exc.value.code == "CREDITS_EXHAUSTED" and BillableAction.objects.count() == 1


@pytest.mark.parametrize(("kw", "code"), [
    ({"tier": "mega"}, "INVALID_ACTION_TIER"),
    ({"metadata": ["not", "an", "object"]}, "INVALID_REQUEST"),
    ({"idempotency_key": "k" * 256}, "INVALID_REQUEST"),
    ({"user_id": ""}, "INVALID_REQUEST"),
    ({"description": "d" * 1001}, "INVALID_REQUEST"),
])
def test_bad_input_is_refused_before_anything_is_written(now, kw, code):
    org = OrganizationFactory()
    args = {"organization_id": org.pk, "user_id": "u", "tier": "small", "now": now, **kw}
    with pytest.raises((InvalidRequest, BillingError)) as exc:
        action_record(**args)
    assert exc.value.code == code
    assert not BillableAction.objects.exists() and not CreditBalance.objects.exists()


def test_batch_charges_in_order_with_replays_and_refusals(now, settings, insert_path):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("16.00"), now=now)
    earlier = record(org, "small", now, idempotency_key="old")
    actions = [ActionInput(user_id="u", tier="xl", idempotency_key="a"),   # plan
               ActionInput(user_id="u", tier="xl"),                         # credits 15
               ActionInput(user_id="u", tier="xl", idempotency_key="b"),   # refused (1 credit left)
               ActionInput(user_id="u1", tier="small", idempotency_key="old"),  # replay of an earlier action
               ActionInput(user_id="u", tier="xl", idempotency_key="a"),   # replay within the batch
               ActionInput(user_id="u", tier="small")]                      # plan
    result = actions_record_batch(organization_id=org.pk, actions=actions, now=now)
    statuses = [(i["status"], i.get("paidFrom")) for i in result.items]
    assert statuses == [(201, "plan"), (201, "credits"), (402, None), (200, "plan"), (200, "plan"), (201, "plan")]
    assert (result.recorded, result.replayed, result.refused) == (3, 2, 1)
    assert result.items[3]["actionId"] == earlier.action_id
    assert result.items[4]["actionId"] == result.items[0]["actionId"]
    assert result.items[2]["error"]["code"] == "CREDITS_EXHAUSTED"
    assert BillableAction.objects.count() == 4
    b = CreditBalance.objects.get(organization=org)
    assert (b.used_xl, b.used_small, b.topup_used) == (1, 2, Decimal("15.00"))
    ids = sorted(BillableAction.objects.values_list("pk", flat=True))
    assert {result.items[i]["actionId"] for i in (0, 1, 5)} | {earlier.action_id} == set(ids)


def test_batch_with_a_bad_item_records_nothing(now):
    org = OrganizationFactory()
    actions = [ActionInput(user_id="u", tier="small"), ActionInput(user_id="u", tier="nope")]
    with pytest.raises(BillingError) as exc:
        actions_record_batch(organization_id=org.pk, actions=actions, now=now)
    assert exc.value.extra["index"] == 1 and not BillableAction.objects.exists()
    with pytest.raises(InvalidRequest):
        actions_record_batch(organization_id=org.pk, actions=[ActionInput(user_id="u", tier="small")] * 1001,
                             now=now)


def test_check_answers_without_writing(now):
    org = OrganizationFactory(subscription_tier=PlanTier.STARTER)
    body = action_check(organization_id=org.pk, tier="medium", now=now)
    assert body["allowed"] is True and body["paidFrom"] == "plan" and body["remainingCredits"]["medium"] == 100
    assert not CreditBalance.objects.exists() and not BillableAction.objects.exists()


@pytest.mark.django_db
def test_billable_actions_are_immutable_in_the_database(now):
    """Facts are append-only: the database itself refuses to change a recorded action."""
    from django.db import DatabaseError, transaction

    from organizations.tests.factories import OrganizationFactory
    from usage.models import BillableAction
    from usage.services import action_record

    org = OrganizationFactory()
    action_id = action_record(organization_id=org.pk, user_id="u1", tier="xl", now=now).action_id
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
        BillableAction.objects.filter(pk=action_id).update(credits_charged="0.00", paid_from="overage")
    row = BillableAction.objects.get(pk=action_id)
    assert (row.paid_from, row.tier) == ("plan", "xl")
