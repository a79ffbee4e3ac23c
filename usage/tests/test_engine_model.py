"""A hypothesis state machine: the engine (through usage.services, on MariaDB) against a tiny
reference model of DESIGN.md's rules. Every step compares the cached balance and the fact rows."""
from __future__ import annotations

import datetime as dt
from decimal import ROUND_CEILING, Decimal

import pytest
from dateutil.relativedelta import relativedelta
from django.db.models import Count, Sum
from hypothesis import HealthCheck, settings as hsettings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from billing.errors import BillingError
from billing.models import CreditBalance
from billing.services.balance import balance_add_topup_credits, balance_set_plan
from billing_project.errors import AppError
from organizations.tests.factories import FIXED_CREATED, OrganizationFactory
from usage.models import BillableAction
from usage.services import action_check, action_record

COST = {"small": Decimal("1"), "medium": Decimal("2.5"), "large": Decimal("5"), "xl": Decimal("15")}
INCLUDED = {"free": (10, 4, 2, 1), "starter": (250, 100, 50, 15)}
TIERS = ("small", "medium", "large", "xl")


class Reference:
    """The rules, written as plainly as possible."""

    def __init__(self, buffer_percent: int):
        self.pct = buffer_percent
        self.plan = "free"
        self.included = dict(zip(TIERS, INCLUDED["free"]))
        self.used = dict.fromkeys(TIERS, 0)
        self.overage = dict.fromkeys(TIERS, 0)
        self.purchased = self.spent = self.owed = Decimal("0")
        self.period_start = FIXED_CREATED  # free periods: the 1st of each month (created on the 1st)

    def buffer(self, t):
        return int((Decimal(self.included[t] * self.pct) / 100).to_integral_value(ROUND_CEILING))

    def decide(self, t):
        if self.used[t] < self.included[t]:
            return "plan"
        if self.purchased - self.spent >= COST[t]:
            return "credits"
        if self.overage[t] < self.buffer(t):
            return "overage"
        return None

    def charge(self, t):
        where = self.decide(t)
        if where == "plan":
            self.used[t] += 1
        elif where == "credits":
            self.spent += COST[t]
        elif where == "overage":
            self.overage[t] += 1
            self.owed += COST[t]
        return where

    def topup(self, amount):
        self.purchased += amount
        settle = min(self.owed, self.purchased - self.spent)
        self.spent += settle
        self.owed -= settle

    def advance_to(self, now):
        if self.plan != "free":
            return
        while now >= self.period_start + relativedelta(months=1):
            self.period_start += relativedelta(months=1)
            self.used = dict.fromkeys(TIERS, 0)
            self.overage = dict.fromkeys(TIERS, 0)


class EngineMachine(RuleBasedStateMachine):
    buffer_percent = 10

    def __init__(self):
        super().__init__()
        self.org = OrganizationFactory()
        self.ref = Reference(self.buffer_percent)
        self.now = FIXED_CREATED + dt.timedelta(hours=1)
        self.keys: dict[str, tuple[int, str]] = {}  # key -> (action id, tier it was recorded for)

    @rule(tier=st.sampled_from(TIERS), key=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])))
    def record(self, tier, key):
        check = action_check(organization_id=self.org.pk, tier=tier, now=self.now)
        if key in self.keys:  # a replay: nothing changes; the first action answers, or 409 for another tier
            first_id, first_tier = self.keys[key]
            if tier != first_tier:
                with pytest.raises(AppError) as exc:
                    action_record(organization_id=self.org.pk, user_id="u", tier=tier, now=self.now,
                                  idempotency_key=key)
                assert exc.value.code == "IDEMPOTENCY_KEY_REUSED" and exc.value.http_status == 409
                return
            r = action_record(organization_id=self.org.pk, user_id="u", tier=tier, now=self.now, idempotency_key=key)
            assert not r.created and r.action_id == first_id
            return
        expected = self.ref.charge(tier)
        assert check["allowed"] == (expected is not None) and check["paidFrom"] == expected
        try:
            r = action_record(organization_id=self.org.pk, user_id="u", tier=tier, now=self.now, idempotency_key=key)
        except BillingError as exc:
            assert expected is None and exc.code == "CREDITS_EXHAUSTED"
            return
        assert r.created and r.body["paidFrom"] == expected
        if key:
            self.keys[key] = (r.action_id, tier)

    @rule(tier=st.sampled_from(TIERS))
    def use_up_the_plan(self, tier):
        """Jump to the interesting boundary: record until the tier's allowance is used (free plan)."""
        while self.ref.plan == "free" and self.ref.used[tier] < self.ref.included[tier]:
            self.record(tier, None)

    @rule(tier=st.sampled_from(TIERS))
    def top_up_to_exactly_one_action(self, tier):
        """The credits boundary: make the top-up remainder exactly c(tier) (after settling owed
        overage), then record that tier - paid from credits only if the plan is used up."""
        missing = COST[tier] - (self.ref.purchased - self.ref.spent) + self.ref.owed
        if missing > 0:
            self.topup(missing.quantize(Decimal("0.01")))
        self.record(tier, None)

    @rule(amount=st.sampled_from([Decimal("0.50"), Decimal("1.00"), Decimal("2.50"), Decimal("5.00"),
                                  Decimal("15.00"), Decimal("500.00")]))
    def topup(self, amount):
        balance_add_topup_credits(organization_id=self.org.pk, amount=amount, now=self.now)
        self.ref.topup(amount)

    @rule(days=st.integers(min_value=0, max_value=40))
    def advance(self, days):
        self.now += dt.timedelta(days=days)
        self.ref.advance_to(self.now)

    @rule()
    def upgrade_to_starter(self):
        if self.ref.plan == "starter":
            return
        balance_set_plan(organization_id=self.org.pk, plan_tier="starter", now=self.now)
        self.ref.plan = "starter"
        self.ref.included = dict(zip(TIERS, INCLUDED["starter"]))

    @invariant()
    def balance_matches_reference_and_rows(self):
        b = CreditBalance.objects.filter(organization=self.org).first()
        if b is None:
            return
        ref = self.ref
        if b.period_end <= self.now:  # not yet rolled (rolls on the next write); the reference already did
            return
        for t in TIERS:
            assert (b.included(t), b.used(t), b.overage(t)) == (ref.included[t], ref.used[t], ref.overage[t]), t
        assert (b.topup_purchased, b.topup_used, b.overage_credits_owed) == (ref.purchased, ref.spent, ref.owed)
        rows = BillableAction.objects.filter(organization=self.org, period_start=b.period_start)
        counts = {(r["tier"], r["paid_from"]): r["n"] for r in rows.values("tier", "paid_from").annotate(n=Count("id"))}
        for t in TIERS:
            assert counts.get((t, "plan"), 0) == b.used(t)
            assert counts.get((t, "overage"), 0) == b.overage(t)
        credits = BillableAction.objects.filter(organization=self.org, paid_from="credits").aggregate(
            s=Sum("credits_charged"))["s"] or 0
        owed_total = BillableAction.objects.filter(organization=self.org, paid_from="overage").aggregate(
            s=Sum("credits_charged"))["s"] or 0
        # Credits used = credits actions + overage settled (owed ever - owed now).
        assert b.topup_used == credits + (owed_total - b.overage_credits_owed)


class HardLimitMachine(EngineMachine):
    buffer_percent = 0


# Transactional: action_record's charge session then frames its own transaction (two round trips,
# outside any atomic block), period rolls and warning emails included; creation goes atomic.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("machine", [EngineMachine, HardLimitMachine])
def test_engine_matches_the_reference_model(machine, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = machine.buffer_percent
    run_state_machine_as_test(machine, settings=hsettings(
        max_examples=30, stateful_step_count=30, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
