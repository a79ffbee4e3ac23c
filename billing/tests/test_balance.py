"""The credit engine's rules and boundaries, on MariaDB (billing.services.balance)."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail
from django.db import transaction

from billing.errors import BillingError
from billing.models import CreditBalance
from billing.api_shapes import balance_summary_json
from billing.selectors import balance_summary
from billing.services.balance import (
    balance_add_topup_credits,
    balance_charge,
    balance_check,
    balance_for_update,
    balance_set_plan,
    balance_total_remaining,
    free_period,
)
from billing_project.errors import NotFound
from organizations.models import PlanTier
from organizations.tests.factories import FIXED_CREATED, MembershipFactory, OrganizationFactory

pytestmark = pytest.mark.django_db
UTC = dt.timezone.utc


def charge(org, tier, now):
    with transaction.atomic():
        return balance_charge(organization_id=org.pk, tier=tier, now=now)


def charge_n(org, tier, n, now):
    return [charge(org, tier, now) for _ in range(n)]


def bal(org) -> CreditBalance:
    return CreditBalance.objects.get(organization=org)


def test_first_charge_creates_the_balance_with_the_plan_allowance_and_anchored_period(now):
    org = OrganizationFactory()
    r = charge(org, "small", now)
    b = bal(org)
    assert (b.plan_tier, b.included_small, b.included_medium, b.included_large, b.included_xl) == ("free", 10, 4, 2, 1)
    assert (b.period_start, b.period_end) == (FIXED_CREATED, FIXED_CREATED.replace(month=12))
    assert r.paid_from == "plan" and r.credits_charged == Decimal("0.00") and b.used_small == 1


def test_last_included_action_is_free_of_credits_then_credits_then_buffer_then_402(now):
    org = OrganizationFactory()
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("2.00"), now=now)
    results = charge_n(org, "small", 10, now)
    assert [r.paid_from for r in results] == ["plan"] * 10
    assert results[-1].credits_charged == 0 and results[-1].warning == "100percent"
    assert results[7].warning == "80percent" and results[6].warning is None
    assert bal(org).topup_used == 0  # the 10th (last included) action did not touch credits
    r11, r12 = charge_n(org, "small", 2, now)
    assert (r11.paid_from, r11.credits_charged, r11.warning) == ("credits", Decimal("1.00"), "using_topup_credits")
    assert r12.paid_from == "credits" and bal(org).topup_remaining == 0
    r13 = charge(org, "small", now)  # buffer: ceil(10% of 10) = 1
    assert (r13.paid_from, r13.credits_charged, r13.warning) == ("overage", Decimal("1.00"), "buffer")
    with pytest.raises(BillingError) as exc:
        charge(org, "small", now)
    assert exc.value.code == "CREDITS_EXHAUSTED" and exc.value.http_status == 402
    b = bal(org)
    assert (b.used_small, b.overage_small, b.topup_used, b.overage_credits_owed) == (10, 1, Decimal("2.00"),
                                                                                  Decimal("1.00"))


@pytest.mark.parametrize(("plan", "tier", "expected_buffer"), [
    (PlanTier.FREE, "xl", 1),          # ceil(0.1) = 1
    (PlanTier.FREE, "medium", 1),      # ceil(0.4) = 1
    (PlanTier.STARTER, "xl", 2),       # ceil(1.5) = 2
    (PlanTier.STARTER, "large", 5),    # exactly 5
    (PlanTier.PRO, "xl", 16),          # exactly 16
])
def test_buffer_is_percent_of_included_rounded_up(now, plan, tier, expected_buffer):
    org = OrganizationFactory(subscription_tier=plan)
    included = _balance(org, now).included(tier)
    CreditBalance.objects.filter(organization=org).update(**{f"used_{tier}": included})
    paid = [charge(org, tier, now).paid_from for _ in range(expected_buffer)]
    assert paid == ["overage"] * expected_buffer
    with pytest.raises(BillingError, match="no xl|no medium|no large"):
        charge(org, tier, now)
    assert getattr(bal(org), f"overage_{tier}") == expected_buffer


def _balance(org, now) -> CreditBalance:
    with transaction.atomic():
        return balance_for_update(organization_id=org.pk, now=now)


def test_buffer_zero_is_a_hard_limit(now, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()
    charge(org, "xl", now)
    with pytest.raises(BillingError) as exc:
        charge(org, "xl", now)
    assert exc.value.code == "CREDITS_EXHAUSTED"
    assert bal(org).overage_xl == 0 and bal(org).used_xl == 1


def test_credits_exactly_equal_to_cost_pay_and_less_do_not(now, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("17.50"), now=now)
    charge(org, "xl", now)  # plan
    assert charge(org, "xl", now).paid_from == "credits"  # 17.50 >= 15
    with pytest.raises(BillingError):
        charge(org, "xl", now)  # 2.50 < 15
    charge_n(org, "medium", 4, now)  # plan
    assert charge(org, "medium", now).paid_from == "credits"  # 2.50 >= 2.50
    assert bal(org).topup_remaining == Decimal("0.00")


def test_402_carries_the_fields_of_the_design(now):
    org = OrganizationFactory(subscription_tier=PlanTier.STARTER)
    CreditBalance.objects.filter(pk=_balance(org, now).pk).update(used_xl=15, overage_xl=2)
    with pytest.raises(BillingError) as exc:
        charge(org, "xl", now)
    extra = exc.value.extra
    assert extra["remainingCredits"] == {"small": 250, "medium": 100, "large": 50, "xl": 0}
    assert extra["suggestedPlan"] == "pro" and extra["canTopUp"] is True
    assert str(org.pk) in extra["upgradeUrl"] and str(org.pk) in extra["topUpUrl"]
    b = bal(org)
    assert (b.version, b.used_xl, b.overage_xl) == (0, 15, 2)  # the refused charge wrote nothing


def test_topup_settles_owed_overage_first(now):
    org = OrganizationFactory()
    charge(org, "large", now)
    charge(org, "large", now)
    assert charge(org, "large", now).paid_from == "overage"
    assert bal(org).overage_credits_owed == Decimal("5.00")
    result = balance_add_topup_credits(organization_id=org.pk, amount=Decimal("500.00"), now=now)
    b = bal(org)
    assert result.settled_overage == Decimal("5.00")
    assert (b.topup_purchased, b.topup_used, b.overage_credits_owed) == (Decimal("500.00"), Decimal("5.00"), 0)
    assert b.overage_large == 1  # the fact stays; only the debt is settled
    small = balance_add_topup_credits(organization_id=org.pk, amount=Decimal("1.00"), now=now)
    assert small.settled_overage == 0


def test_topup_smaller_than_the_debt_settles_part_of_it(now):
    org = OrganizationFactory()
    charge(org, "xl", now)
    charge(org, "xl", now)  # overage, owes 15
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("10.00"), now=now)
    b = bal(org)
    assert (b.topup_remaining, b.overage_credits_owed) == (0, Decimal("5.00"))


def test_free_period_rolls_lazily_resetting_usage_and_keeping_topup_credits(now):
    org = OrganizationFactory()
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("20.00"), now=now)
    charge_n(org, "xl", 2, now)  # plan, then 15 credits
    later = dt.datetime(2027, 1, 5, tzinfo=UTC)
    r = charge(org, "xl", later)
    b = bal(org)
    assert r.paid_from == "plan"
    assert (b.period_start, b.period_end) == (dt.datetime(2027, 1, 1, tzinfo=UTC), dt.datetime(2027, 2, 1, tzinfo=UTC))
    assert (b.used_xl, b.topup_remaining) == (1, Decimal("5.00"))


def test_check_and_summary_see_the_rolled_period_without_writing(now):
    org = OrganizationFactory()
    charge_n(org, "small", 10, now)
    later = dt.datetime(2027, 1, 5, tzinfo=UTC)
    version = bal(org).version
    assert balance_check(organization_id=org.pk, tier="small", now=now).paid_from == "overage"
    check = balance_check(organization_id=org.pk, tier="small", now=later)
    assert check.allowed and check.paid_from == "plan"
    summary = balance_summary_json(balance_summary(organization=org, now=later))
    assert summary["tiers"]["small"] == {"included": 10, "used": 0, "remaining": 10, "overage": 0,
                                         "overageAllowed": 1, "creditCost": "1.00"}
    assert bal(org).version == version and bal(org).used_small == 10


@pytest.mark.parametrize(("anchor", "now_", "start", "end"), [
    ((2026, 1, 31), (2026, 2, 15), (2026, 1, 31), (2026, 2, 28)),
    ((2026, 1, 31), (2026, 3, 1), (2026, 2, 28), (2026, 3, 31)),
    ((2026, 1, 31), (2026, 3, 31), (2026, 3, 31), (2026, 4, 30)),
    ((2026, 11, 1), (2026, 11, 1), (2026, 11, 1), (2026, 12, 1)),
    ((2026, 11, 1), (2028, 2, 29), (2028, 2, 1), (2028, 3, 1)),
])
def test_free_periods_are_monthly_from_the_creation_day(anchor, now_, start, end):
    d = lambda t: dt.datetime(*t, 9, 30, tzinfo=UTC)  # noqa: E731
    assert free_period(anchor=d(anchor), now=d(now_)) == (d(start), d(end))


def test_paid_period_comes_from_set_plan_reset_is_idempotent_and_upgrade_keeps_usage(now):
    org = OrganizationFactory(subscription_tier=PlanTier.STARTER)
    p1 = (dt.datetime(2026, 11, 3, tzinfo=UTC), dt.datetime(2026, 12, 3, tzinfo=UTC))
    balance_set_plan(organization_id=org.pk, plan_tier="starter", period_start=p1[0], period_end=p1[1],
                     reset_usage=True, now=now)
    charge_n(org, "xl", 3, now)
    balance_set_plan(organization_id=org.pk, plan_tier="starter", period_start=p1[0], period_end=p1[1],
                     reset_usage=True, now=now)  # redelivered webhook
    assert bal(org).used_xl == 3
    balance_set_plan(organization_id=org.pk, plan_tier="pro", now=now)  # upgrade now
    b = bal(org)
    assert (b.plan_tier, b.included_xl, b.used_xl, b.period_start) == ("pro", 160, 3, p1[0])
    # Paid periods are not rolled lazily: after the end, usage stays until the next period arrives.
    after = dt.datetime(2026, 12, 10, tzinfo=UTC)
    charge(org, "xl", after)
    assert bal(org).used_xl == 4
    p2 = (dt.datetime(2026, 12, 3, tzinfo=UTC), dt.datetime(2027, 1, 3, tzinfo=UTC))
    balance_set_plan(organization_id=org.pk, plan_tier="pro", period_start=p2[0], period_end=p2[1],
                     reset_usage=True, now=after)
    b = bal(org)
    assert (b.used_xl, b.period_start, b.period_end) == (0, p2[0], p2[1])


def test_total_remaining_is_plan_remainder_at_tier_rates_plus_topup(now):
    org = OrganizationFactory()
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("12.50"), now=now)
    assert balance_total_remaining(bal(org)) == Decimal("45.00") + Decimal("12.50")
    charge(org, "xl", now)
    assert balance_total_remaining(bal(org)) == Decimal("30.00") + Decimal("12.50")


def test_unknown_org_and_tier_are_refused(now):
    with pytest.raises(NotFound):
        charge(type("O", (), {"pk": "8f7c4c3e-0000-4000-8000-000000000000"})(), "small", now)
    org = OrganizationFactory()
    with pytest.raises(BillingError) as exc:
        charge(org, "huge", now)
    assert exc.value.code == "INVALID_ACTION_TIER"
    assert not CreditBalance.objects.filter(organization=org).exists()


@pytest.mark.django_db(transaction=True)
def test_charge_outside_a_transaction_is_a_programming_error(now):
    with pytest.raises(RuntimeError):
        balance_charge(organization_id=OrganizationFactory().pk, tier="small", now=now)


def test_warning_emails_once_per_kind_per_tier_per_cooldown(now, django_capture_on_commit_callbacks):
    org = MembershipFactory(user__email="boss@example.test").organization
    with django_capture_on_commit_callbacks(execute=True):
        charge_n(org, "small", 11, now)  # 80% at the 8th, 100% at the 10th, overage at the 11th
        charge_n(org, "medium", 4, now)  # 80% of 4 = 3.2: crossed by the 4th, which is also 100%
    subjects = sorted(m.subject for m in mail.outbox)
    assert subjects == [
        f"{org.name} has used 80% of its Small actions",
        f"{org.name} has used all of its Medium actions",
        f"{org.name} has used all of its Small actions",
        f"{org.name} is running on overage for Small actions",
    ]
    assert mail.outbox[0].to == ["boss@example.test"]
    # The next period: the 80% email went out 23 h ago (cooldown), the 100% one 25 h ago.
    mail.outbox.clear()
    b = bal(org)
    later = b.period_end + dt.timedelta(minutes=1)
    CreditBalance.objects.filter(pk=b.pk).update(warned_80_small_at=later - dt.timedelta(hours=23),
                                                 warned_100_small_at=later - dt.timedelta(hours=25))
    with django_capture_on_commit_callbacks(execute=True):
        charge_n(org, "small", 10, later)
    assert [m.subject for m in mail.outbox] == [f"{org.name} has used all of its Small actions"]


def test_a_rolled_back_charge_sends_no_email(now, django_capture_on_commit_callbacks):
    org = MembershipFactory().organization
    with django_capture_on_commit_callbacks(execute=True):
        _balance(org, now)
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            balance_charge(organization_id=org.pk, tier="xl", now=now)  # 100% email queued...
            1 / 0  # ...and rolled back with the charge
    assert mail.outbox == [] and bal(org).used_xl == 0
