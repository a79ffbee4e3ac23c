"""Recording goes through billing's charge session: on MariaDB, outside any transaction, one round
trip takes the lock (`START TRANSACTION; SELECT … FOR UPDATE`) and one carries the fact INSERT,
the rollup upsert, the balance UPDATE and the COMMIT - also when the rules make a warning email
due or a free period has ended (no second, slower path)."""
from __future__ import annotations

import datetime as dt
import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import CreditBalance
from billing.services.balance import balance_set_plan
from organizations.models import PlanTier
from organizations.tests.factories import FIXED_CREATED, MembershipFactory, OrganizationFactory
from usage.models import BillableAction
from usage.services import ActionInput, action_record, actions_record_batch

UTC = dt.timezone.utc

pytestmark = pytest.mark.django_db(transaction=True)  # outside any atomic block, as in production


def starter_org(now, **counters):
    org = MembershipFactory(user__email="admin@trips.test", organization__subscription_tier=PlanTier.STARTER,
                            organization__name="Trips Co").organization
    balance_set_plan(organization_id=org.pk, plan_tier="starter", period_start=dt.datetime(2026, 11, 3, tzinfo=UTC),
                     period_end=dt.datetime(2026, 12, 3, tzinfo=UTC), reset_usage=True, now=now)
    CreditBalance.objects.filter(organization=org).update(**counters)
    return org


def record_sql(org, now) -> tuple[dict, list[str]]:
    """The body of one recorded small action and the SQL it sent up to its COMMIT, one entry per
    round trip (what follows is the eager email task reading the org's admins)."""
    with CaptureQueriesContext(connection) as queries:
        result = action_record(organization_id=org.pk, user_id="u1", tier="small", now=now)
    sql = [q["sql"] for q in queries.captured_queries]
    committed = next((i for i, s in enumerate(sql) if s.endswith("COMMIT")), len(sql))
    return result.body, sql[:committed + 1]


def test_the_action_crossing_80_percent_takes_the_same_two_round_trips_and_emails_once(now):
    org = starter_org(now, used_small=199)  # 250 included: the 200th action reaches 80 %
    body, sql = record_sql(org, now)
    assert body["warning"] == "80percent"
    assert len(sql) == 2, sql
    assert sql[0].startswith("START TRANSACTION; SELECT") and sql[0].endswith("FOR UPDATE")
    assert sql[1].startswith("INSERT INTO billable_actions") and sql[1].endswith("COMMIT")
    b = CreditBalance.objects.get(organization=org)
    assert b.used_small == 200 and b.warned_80_small_at is not None
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["admin@trips.test"]  # queued once committed


def test_a_free_period_that_ended_rolls_in_the_record_s_own_update(now):
    org = OrganizationFactory(created_at=FIXED_CREATED)
    record_sql(org, now)
    period_end = CreditBalance.objects.get(organization=org).period_end
    body, sql = record_sql(org, period_end + dt.timedelta(hours=1))
    assert body["remainingCredits"]["small"] == 9  # a new period's allowance
    assert not any("ROLLBACK" in s for s in sql), sql
    assert sql[0].startswith("START TRANSACTION") and sql[-1].endswith("COMMIT")
    assert [s for s in sql if "UPDATE credit_balances" in s] == [sql[-1]]  # one UPDATE: roll and charge
    b = CreditBalance.objects.get(organization=org)
    assert b.period_start == period_end and b.used_small == 1
    assert BillableAction.objects.filter(organization=org).count() == 2


def test_a_batch_commits_in_the_round_trip_of_its_insert(now):
    org = starter_org(now)
    with CaptureQueriesContext(connection) as queries:
        result = actions_record_batch(organization_id=org.pk, now=now,
                                      actions=[ActionInput(user_id="u1", tier="small") for _ in range(3)])
    assert result.recorded == 3
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) == 2, sql
    assert sql[0].startswith("START TRANSACTION") and sql[1].endswith("COMMIT")
