"""manage.py reconcile: drift in every counter is found and fixed; a consistent database is quiet."""
from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection

from billing.models import CreditBalance, CreditPurchase
from billing.plans import TIERS
from billing.services.grants import credit_grant_create
from organizations.tests.factories import OrganizationFactory, UserFactory
from usage.models import BillableAction
from usage.services import action_record
from usage.services_reconcile import COUNTER_FIELDS, reconcile_orgs

pytestmark = pytest.mark.django_db


def run_reconcile(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("reconcile", *args, stdout=out, stderr=io.StringIO())
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue()


def _record(org, tier, now, n=1):
    return [action_record(organization_id=org.pk, user_id="u1", tier=tier, now=now).body["paidFrom"]
            for _ in range(n)]


@pytest.fixture
def busy_org(now):
    """A free org that used its plan, ran into overage, got a grant that settled it, spent credits,
    and ran into overage again (owed > 0 after the last top-up). Built with the real services."""
    org = OrganizationFactory(slug="busy")
    staff = UserFactory(username="ops@example.test", is_staff=True)
    t = now
    assert _record(org, "small", t, 10) == ["plan"] * 10
    assert _record(org, "small", t) == ["overage"]          # buffer: ceil(10% of 10) = 1
    assert _record(org, "xl", t, 2) == ["plan", "overage"]   # owed 1 + 15
    t += dt.timedelta(minutes=1)
    credit_grant_create(organization_id=org.pk, credits=Decimal("20.00"), reason="test", granted_by=staff, now=t)
    t += dt.timedelta(minutes=1)
    assert _record(org, "small", t, 2) == ["credits", "credits"]
    assert _record(org, "medium", t, 5) == ["plan"] * 4 + ["overage"]  # 2 credits left < 2.50
    balance = CreditBalance.objects.get(organization=org)
    assert (balance.topup_purchased, balance.topup_used, balance.overage_credits_owed) == (
        Decimal("20.00"), Decimal("18.00"), Decimal("2.50"))
    return org


@pytest.fixture
def quiet_org(now):
    org = OrganizationFactory(slug="quiet")
    _record(org, "large", now, 1)
    return org


def test_consistent_database_reports_nothing_and_exits_0(busy_org, quiet_org):
    OrganizationFactory(slug="never-used")  # no balance, no facts: not a drift
    code, out = run_reconcile()
    assert code == 0, out
    assert "No drift: 3 orgs checked" in out


def _inject(org, field: str) -> object:
    balance = CreditBalance.objects.get(organization=org)
    good = getattr(balance, field)
    delta = Decimal("1.25") if isinstance(good, Decimal) else 1
    bad = good - delta if good - delta >= 0 else good + 3 * delta  # within the table's CHECKs
    with connection.cursor() as cursor:  # drift behind the services' back, as a bug would
        cursor.execute(f"UPDATE credit_balances SET {field} = %s WHERE id = %s", [bad, balance.pk])
    return good, bad


@pytest.mark.parametrize("field", COUNTER_FIELDS)
def test_drift_in_each_counter_is_found_then_fixed(busy_org, quiet_org, field):
    good, bad = _inject(busy_org, field)

    code, out = run_reconcile()
    assert code == 1
    assert "busy" in out and field in out and "quiet" not in out
    assert getattr(CreditBalance.objects.get(organization=busy_org), field) == bad  # a check changes nothing

    code, out = run_reconcile("--json")
    doc = json.loads(out)
    assert code == 1
    assert doc["driftedOrgs"] == 1
    assert [(d["org"], d["field"]) for d in doc["drifts"]] == [("busy", field)]
    assert doc["drifts"][0]["expected"] == (str(good) if isinstance(good, Decimal) else good)

    code, out = run_reconcile("--fix")
    assert code == 0, out
    assert "Fixed 1 orgs" in out
    assert getattr(CreditBalance.objects.get(organization=busy_org), field) == good

    code, out = run_reconcile()
    assert code == 0 and "No drift" in out


def test_json_shape_when_consistent(busy_org):
    code, out = run_reconcile("--json", "--org", "busy")
    doc = json.loads(out)
    assert code == 0
    assert set(doc) == {"fix", "checkedOrgs", "driftedOrgs", "drifts", "fixedOrgs", "unfixable", "seconds"}
    assert (doc["checkedOrgs"], doc["driftedOrgs"], doc["drifts"], doc["fix"]) == (1, 0, [], False)


def test_org_filter_only_checks_that_org(busy_org, quiet_org):
    _inject(quiet_org, "used_large")
    assert run_reconcile("--org", "busy")[0] == 0
    code, out = run_reconcile("--org", "quiet", "--json")
    assert code == 1 and json.loads(out)["drifts"][0]["field"] == "used_large"


def test_unknown_org_is_an_error(busy_org):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("reconcile", "--org", "nope", stdout=io.StringIO())


def test_only_the_current_period_counts(now):
    org = OrganizationFactory(slug="periods")
    _record(org, "small", now, 3)
    later = now + dt.timedelta(days=31)  # the free period (anchored on Nov 1) rolled on Dec 1
    _record(org, "small", later, 2)
    balance = CreditBalance.objects.get(organization=org)
    assert balance.used_small == 2
    assert BillableAction.objects.filter(organization=org).count() == 5
    assert reconcile_orgs(now=later).drifts == []


def test_drift_in_several_orgs_and_fields_all_reported(busy_org, quiet_org, now):
    _inject(busy_org, "topup_used")
    _inject(quiet_org, "used_large")
    _inject(quiet_org, "included_xl")
    report = reconcile_orgs(now=now, chunk_size=1)  # one org per chunk: pagination is exercised
    assert sorted((d.org_slug, d.field) for d in report.drifts) == [
        ("busy", "topup_used"), ("quiet", "included_xl"), ("quiet", "used_large")]
    assert report.checked_orgs == 2


def test_fix_logs_every_money_correction(busy_org, now, caplog):
    _inject(busy_org, "topup_purchased")
    with caplog.at_level("INFO", logger="billing.money"):
        report = reconcile_orgs(now=now, fix=True, actor="test")
    assert report.fixed_orgs == ["busy"]
    lines = [r.getMessage() for r in caplog.records if r.name == "billing.money"]
    assert any("event=balance.reconciled" in line and "field=topup_purchased" in line
               and "rebuilt=20.00" in line for line in lines), lines


def test_missing_balance_with_facts_is_a_drift_and_fix_creates_it(busy_org, now):
    CreditBalance.objects.filter(organization=busy_org).delete()
    report = reconcile_orgs(now=now)
    assert [(d.field, d.cached) for d in report.drifts] == [("balance", None)]
    reconcile_orgs(now=now, fix=True)
    balance = CreditBalance.objects.get(organization=busy_org)
    assert (balance.used_small, balance.overage_small, balance.topup_used, balance.overage_credits_owed) == (
        10, 1, Decimal("18.00"), Decimal("2.50"))
    assert reconcile_orgs(now=now).drifts == []


def test_grant_purchase_rows_feed_topup_purchased(busy_org):
    assert CreditPurchase.objects.filter(organization=busy_org, kind="grant").count() == 1
    assert set(TIERS) == {"small", "medium", "large", "xl"}


@pytest.mark.parametrize("damage", ["changed", "deleted", "bogus"])
def test_rollup_drift_is_found_and_rebuilt_from_the_facts(busy_org, quiet_org, damage):
    from usage.models import UsageDailyRollup

    def snapshot():
        return sorted(UsageDailyRollup.objects.filter(organization=busy_org)
                      .values_list("day", "tier", "user_id", "actions", "credits_charged"))

    good = snapshot()
    assert good, "the services keep rollups for recorded actions"
    row = UsageDailyRollup.objects.filter(organization=busy_org, tier="small").first()
    with connection.cursor() as cursor:  # damage behind the services' back
        if damage == "changed":
            cursor.execute("UPDATE usage_daily_rollups SET actions = actions + 2 WHERE id = %s", [row.pk])
        elif damage == "deleted":
            cursor.execute("DELETE FROM usage_daily_rollups WHERE id = %s", [row.pk])
        else:
            cursor.execute("INSERT INTO usage_daily_rollups (organization_id, day, tier, user_id, actions,"
                           " credits_charged) VALUES (%s, %s, 'xl', 'ghost', 3, 45.00)",
                           [busy_org.pk.hex, row.day])

    code, out = run_reconcile("--json")
    doc = json.loads(out)
    assert code == 1
    fields = [(d["org"], d["field"]) for d in doc["drifts"]]
    expected_user = "ghost" if damage == "bogus" else "u1"
    expected_tier = "xl" if damage == "bogus" else "small"
    assert fields == [("busy", f"rollup:{row.day}/{expected_tier}/{expected_user}")]

    code, out = run_reconcile("--fix")
    assert code == 0, out
    assert snapshot() == good
    assert run_reconcile()[0] == 0


# --- top-ups racing actions: the engine's order is the balance lock's, not the `now`s' -----------
# Every writer takes its `now` before it waits for the org's balance lock (the auto top-up task even
# takes it before its Stripe call, seconds before it credits), so an action committed before a top-up
# can carry a later timestamp than the top-up's credits_applied_at, and one committed after it an
# earlier one. The services are called here in the order the lock would serialize them, each with
# the `now` it would carry - exactly the interleaving two racing processes produce.

def _exhausted_xl_free_org(now, slug):
    org = OrganizationFactory(slug=slug)
    assert _record(org, "xl", now, 2) == ["plan", "overage"]   # owed 15
    return org


def test_overage_committed_before_a_topup_with_an_earlier_now_is_not_drift(now):
    """The auto top-up task took now=T0, called Stripe; meanwhile an overage action (now=T1 > T0)
    committed; then the payment's credits landed (credits_applied_at=T0) and settled it."""
    staff = UserFactory(username="ops-race1@example.test", is_staff=True)
    org = OrganizationFactory(slug="race-before")
    t0 = now + dt.timedelta(minutes=1)
    t1 = t0 + dt.timedelta(seconds=2)
    assert _record(org, "xl", now) == ["plan"]
    assert _record(org, "xl", t1) == ["overage"]              # owed 15, committed first
    credit_grant_create(organization_id=org.pk, credits=Decimal("500.00"), reason="race", granted_by=staff, now=t0)
    balance = CreditBalance.objects.get(organization=org)
    assert (balance.topup_purchased, balance.topup_used, balance.overage_credits_owed) == (
        Decimal("500.00"), Decimal("15.00"), Decimal("0.00"))
    assert reconcile_orgs(now=t1).drifts == []
    reconcile_orgs(now=t1, fix=True)  # and --fix must not re-create the settled debt
    balance.refresh_from_db()
    assert (balance.topup_used, balance.overage_credits_owed) == (Decimal("15.00"), Decimal("0.00"))


def test_overage_committed_after_a_topup_with_an_earlier_now_is_not_drift(now):
    """A grant (now=T2) settles 15 owed and leaves 2 credits; an action that took now=T1 < T2 but
    got the lock after it runs into overage (5 owed, not settled by that grant)."""
    staff = UserFactory(username="ops-race2@example.test", is_staff=True)
    org = _exhausted_xl_free_org(now, "race-after")
    assert _record(org, "large", now, 2) == ["plan", "plan"]
    t1 = now + dt.timedelta(minutes=1)
    t2 = t1 + dt.timedelta(milliseconds=5)
    credit_grant_create(organization_id=org.pk, credits=Decimal("17.00"), reason="race", granted_by=staff, now=t2)
    assert _record(org, "large", t1) == ["overage"]            # 2 credits left < 5
    balance = CreditBalance.objects.get(organization=org)
    assert (balance.topup_purchased, balance.topup_used, balance.overage_credits_owed) == (
        Decimal("17.00"), Decimal("15.00"), Decimal("5.00"))
    assert reconcile_orgs(now=t2).drifts == []


def test_backfill_of_overage_settled_replays_the_old_timestamp_order(busy_org, now):
    """usage.0005 recomputes overage_settled for rows applied before the column existed."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("usage.migrations.0005_backfill_purchase_overage_settled")
    grant = CreditPurchase.objects.get(organization=busy_org, kind="grant")
    assert grant.overage_settled == Decimal("16.00")   # the grant paid the 1 + 15 owed
    CreditPurchase.objects.filter(pk=grant.pk).update(overage_settled=Decimal("0.00"))
    assert {d.field for d in reconcile_orgs(now=now).drifts} == {"topup_used", "overage_credits_owed"}
    migration.backfill(apps, None)
    grant.refresh_from_db()
    assert grant.overage_settled == Decimal("16.00")
    assert reconcile_orgs(now=now).drifts == []



@pytest.mark.django_db(transaction=True)
def test_check_mode_reads_one_snapshot_so_a_concurrent_action_is_not_drift(now):
    """Read-only reconcile (the daily health mail, `reconcile` exit code) reads the cached balances,
    then the facts, then the rollups. An action committed by another process between those reads
    must not look like drift. The other process is a real thread on its own connection, started
    exactly between the reads (a query hook, Django's execute_wrapper - no mock)."""
    import threading

    org = OrganizationFactory(slug="live")
    _record(org, "small", now, 3)
    fired: list[bool] = []

    def concurrent_action(execute, sql, params, many, context):
        if not fired and "FROM billable_actions" in sql:
            fired.append(True)

            def other_process():
                try:
                    action_record(organization_id=org.pk, user_id="u2", tier="small", now=now)
                finally:
                    connection.close()

            t = threading.Thread(target=other_process)
            t.start()
            t.join(timeout=30)
            assert not t.is_alive()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(concurrent_action):
        report = reconcile_orgs(now=now)
    assert fired, "the hook ran between the reads"
    assert BillableAction.objects.filter(organization=org).count() == 4  # the action really committed
    assert report.drifts == []
    assert reconcile_orgs(now=now).drifts == []
