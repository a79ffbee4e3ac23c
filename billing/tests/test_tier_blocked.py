"""A tier whose plan allowance, credits and buffer are used up is *blocked*: the dashboard says so
per tier (what happens to the next action), its headline counts only spendable credits, and the
first refusal of the period is recorded (blocked_<tier>_at) and emailed to the admins once per
cooldown."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core import mail
from django.db import transaction
from django.db.models import F

from billing.errors import BillingError
from billing.models import CreditBalance
from billing.api_shapes import balance_summary_json
from billing.pages.dashboard import dashboard_context
from billing.selectors import balance_status, balance_summary
from billing.services.balance import (
    balance_add_topup_credits,
    balance_charge,
    balance_charge_many,
    balance_for_update,
    balance_record_refusal,
    balance_set_plan,
)
from organizations.models import PlanTier
from organizations.tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db
UTC = dt.timezone.utc
PERIOD = (dt.datetime(2026, 11, 3, tzinfo=UTC), dt.datetime(2026, 12, 3, tzinfo=UTC))


def pro_org(now, **counters):
    """A Pro org (2,500 / 1,000 / 500 / 160) in PERIOD with the given counters written directly."""
    membership = MembershipFactory(user__email="boss@pro.test", organization__subscription_tier=PlanTier.PRO,
                                   organization__name="Pro Org")
    org = membership.organization
    balance_set_plan(organization_id=org.pk, plan_tier="pro", period_start=PERIOD[0], period_end=PERIOD[1],
                     reset_usage=True, now=now)
    CreditBalance.objects.filter(organization=org).update(**counters)
    return membership


def refuse(org, tier, now):
    """One refused action as the usage API sees it: the charge's transaction rolls back, then the
    refusal is recorded (outside it)."""
    with pytest.raises(BillingError) as exc:
        with transaction.atomic():
            balance_charge(organization_id=org.pk, tier=tier, now=now)
    assert exc.value.code == "CREDITS_EXHAUSTED"
    balance_record_refusal(error=exc.value, now=now)
    return exc.value


def bal(org) -> CreditBalance:
    return CreditBalance.objects.get(organization=org)


# An org whose XL tier is blocked: XL allowance (160) and buffer (16) used, 8.50 top-up credits left, 200 medium used.
XL_BLOCKED = {"used_xl": 160, "overage_xl": 16, "overage_credits_owed": Decimal("240.00"), "used_medium": 200,
         "topup_purchased": Decimal("508.50"), "topup_used": Decimal("500.00")}


def test_per_tier_next_action_and_the_headline_counts_only_spendable_credits(now):
    org = pro_org(now, **XL_BLOCKED).organization
    status = balance_status(organization_id=org.pk, now=now)
    by_tier = {s.tier: s for s in status.tiers}
    assert by_tier["small"].next_paid_from == "plan" and by_tier["small"].plan_left == 2500
    assert by_tier["medium"].next_paid_from == "plan" and by_tier["medium"].plan_left == 800
    assert by_tier["xl"].next_paid_from is None and by_tier["xl"].blocked
    assert by_tier["xl"].blocked_since is None  # nothing refused yet
    assert by_tier["xl"].buffer_left == 0 and by_tier["xl"].credit_actions == 0
    # Plan allowance of other tiers is not spendable by an XL action: it is not "credits".
    assert status.spendable_credits == Decimal("8.50")
    # A pack of 500 first settles the 240 owed, leaving 268.50: one pack unblocks XL.
    assert by_tier["xl"].packs_to_unblock == 1

    ctx = dashboard_context(membership=MembershipFactory(organization=org, role="owner"), now=now)
    assert ctx["spendable_credits"] == Decimal("8.50")
    assert [b.next_kind for b in ctx["tier_bars"]] == ["plan", "plan", "plan", "blocked"]
    assert not any("overage" in w for w in ctx["usage_warnings"] if w.startswith("XL"))  # it is not running
    assert [b.kind for b in ctx["banners"]] == ["tier-blocked"]
    assert "XL" in ctx["banners"][0].text
    typed = balance_summary(organization=org, now=now)  # typed inside: Decimal / int / datetime, no strings
    assert typed.spendable_credits == Decimal("8.50") and typed.total_remaining == Decimal("7008.50")
    assert isinstance(typed.period_start, dt.datetime) and typed.next[-1].blocked
    summary = balance_summary_json(typed)
    assert summary["spendableCredits"] == "8.50"
    assert summary["next"]["xl"] == {"paidFrom": None, "blocked": True, "blockedSince": None, "bufferLeft": 0}
    assert summary["totalRemaining"] == "7008.50"  # the API's auto top-up figure (DESIGN) is unchanged


def test_credits_and_buffer_states(now):
    org = pro_org(now, used_large=500, used_xl=160, overage_xl=3, topup_purchased=Decimal("8.50")).organization
    by_tier = {s.tier: s for s in balance_status(organization_id=org.pk, now=now).tiers}
    assert (by_tier["large"].next_paid_from, by_tier["large"].credit_actions) == ("credits", 1)  # 8.50 // 5
    assert (by_tier["xl"].next_paid_from, by_tier["xl"].buffer_left) == ("overage", 13)  # 16 - 3
    ctx = dashboard_context(membership=MembershipFactory(organization=org, role="owner"), now=now)
    texts = {b.tier: b.next_text for b in ctx["tier_bars"]}
    assert "Paid from credits (5 each" in texts["large"]
    assert "13 buffer (overage) actions left" in texts["xl"]
    assert ctx["banners"] == []


def test_first_refusal_records_blocked_at_and_emails_once_later_refusals_write_nothing(
        now, django_capture_on_commit_callbacks):
    org = pro_org(now, **XL_BLOCKED).organization
    with django_capture_on_commit_callbacks(execute=True):
        refuse(org, "xl", now)
    b = bal(org)
    assert b.blocked_xl_at == now and b.warned_blocked_xl_at == now
    assert [m.subject for m in mail.outbox] == ["Pro Org: XL actions are blocked"]
    assert mail.outbox[0].to == ["boss@pro.test"]
    assert "Buy credits" in mail.outbox[0].body and "upgrade to Max" in mail.outbox[0].body
    version = b.version
    with django_capture_on_commit_callbacks(execute=True):
        for minutes in (1, 2, 3):
            refuse(org, "xl", now + dt.timedelta(minutes=minutes))
    assert bal(org).version == version and bal(org).blocked_xl_at == now  # no write after the first
    assert len(mail.outbox) == 1
    status = {s.tier: s for s in balance_status(organization_id=org.pk, now=now).tiers}
    assert status["xl"].blocked_since == now
    ctx = dashboard_context(membership=MembershipFactory(organization=org, role="owner"), now=now)
    xl = next(b for b in ctx["tier_bars"] if b.tier == "xl")
    assert "Blocked since 12:00 UTC" in xl.next_text


def test_the_next_allowed_action_clears_the_block_and_a_new_block_respects_the_cooldown(
        now, django_capture_on_commit_callbacks):
    org = pro_org(now, **XL_BLOCKED).organization
    with django_capture_on_commit_callbacks(execute=True):
        refuse(org, "xl", now)
    later = now + dt.timedelta(hours=2)
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("500.00"), now=later)
    assert bal(org).blocked_xl_at is None  # the purchase unblocked XL (268.50 credits left)
    with transaction.atomic():
        assert balance_charge(organization_id=org.pk, tier="xl", now=later).paid_from == "credits"
    CreditBalance.objects.filter(organization=org).update(topup_used=F("topup_purchased"))  # credits spent
    with django_capture_on_commit_callbacks(execute=True):
        refuse(org, "xl", later + dt.timedelta(minutes=5))
    b = bal(org)
    assert b.blocked_xl_at == later + dt.timedelta(minutes=5)  # blocked again: recorded again
    assert b.warned_blocked_xl_at == now and len(mail.outbox) == 1  # ...but emailed only once per 24 h
    day_after = now + dt.timedelta(hours=25)
    CreditBalance.objects.filter(organization=org).update(blocked_xl_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        refuse(org, "xl", day_after)
    assert len(mail.outbox) == 2


def test_a_period_reset_clears_the_block(now):
    org = pro_org(now, **XL_BLOCKED).organization
    refuse(org, "xl", now)
    balance_set_plan(organization_id=org.pk, plan_tier="pro", period_start=PERIOD[1],
                     period_end=PERIOD[1] + dt.timedelta(days=30), reset_usage=True, now=PERIOD[1])
    assert bal(org).blocked_xl_at is None


def test_a_refusal_seen_after_a_purchase_landed_records_nothing(now):
    org = pro_org(now, **XL_BLOCKED).organization
    with pytest.raises(BillingError) as exc:
        with transaction.atomic():
            balance_charge(organization_id=org.pk, tier="xl", now=now)
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("500.00"), now=now)  # lands in between
    assert balance_record_refusal(error=exc.value, now=now) is False
    assert bal(org).blocked_xl_at is None


def test_a_batch_refusal_records_the_block_in_its_own_update(now, django_capture_on_commit_callbacks):
    org = pro_org(now, **XL_BLOCKED).organization
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        balance = balance_for_update(organization_id=org.pk, now=now)
        results = balance_charge_many(balance=balance, tiers=["small", "xl", "xl"], now=now)
    assert [getattr(r, "code", None) for r in results] == [None, "CREDITS_EXHAUSTED", "CREDITS_EXHAUSTED"]
    b = bal(org)
    assert (b.used_small, b.blocked_xl_at) == (1, now)
    assert [m.subject for m in mail.outbox] == ["Pro Org: XL actions are blocked"]


def test_a_member_is_told_whom_to_ask_and_the_packs_needed_count_the_overage_owed(now):
    org = pro_org(now, used_xl=160, overage_xl=16, overage_credits_owed=Decimal("1200.00")).organization
    by_tier = {s.tier: s for s in balance_status(organization_id=org.pk, now=now).tiers}
    assert by_tier["xl"].packs_to_unblock == 3  # 1,200 owed + 15 for the action: 1,215 > 2 packs
    member = MembershipFactory(organization=org, role="member")
    banner, = dashboard_context(membership=member, now=now)["banners"]
    assert banner.kind == "tier-blocked" and banner.links == ()
    assert "Ask an owner or admin" in banner.text and "3 packs of 500 are needed" in banner.text
    owner_banner, = dashboard_context(membership=MembershipFactory(organization=org, role="owner"),
                                      now=now)["banners"]
    assert [label for label, _ in owner_banner.links] == ["Buy credits", "Upgrade to Max"]
