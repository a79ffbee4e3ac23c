"""The dashboard's bars show the credit engine's balance (charged through billing's balance service)."""
from decimal import Decimal

import pytest
from django.db import transaction
from django.utils import timezone
from playwright.sync_api import expect

from billing.services.balance import balance_add_topup_credits, balance_charge

pytestmark = pytest.mark.browser


def _charge(org, tier: str, n: int) -> None:
    for _ in range(n):
        with transaction.atomic():
            balance_charge(organization_id=org.pk, tier=tier, now=timezone.now())


def test_bars_match_the_balance(page, login, owner_membership, now, screenshot):
    # `now`: the clock (also the live server's, a thread of this process) is far from a period end;
    # on the real clock, a free org's period boundary between the charges and the page load gave 0 used.
    org = owner_membership.organization  # Free: 10 small, 4 medium, 2 large, 1 xl
    _charge(org, "small", 8)      # 80 %  -> warn
    _charge(org, "medium", 4)     # 100 % -> full
    _charge(org, "large", 1)      # 50 %  -> ok
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("500.00"), now=timezone.now())
    _charge(org, "xl", 2)         # 1 from the plan, 1 from credits (15 credits)

    login(owner_membership)
    expected = {"small": (8, 10, "warn"), "medium": (4, 4, "full"), "large": (1, 2, "ok"), "xl": (1, 1, "full")}
    for tier, (used, included, state) in expected.items():
        bar = page.get_by_test_id(f"bar-{tier}")
        expect(bar).to_have_attribute("aria-valuenow", str(used))
        expect(bar).to_have_attribute("aria-valuemax", str(included))
        expect(bar).to_have_class(f"progress {state}")
        expect(page.get_by_test_id(f"bar-{tier}-text")).to_have_text(f"{used} of {included} used")
    expect(page.get_by_test_id("bar-small").locator("span")).to_have_attribute("style", "width: 80%")
    expect(page.get_by_test_id("bar-topup")).to_have_attribute("aria-valuenow", "15.00")
    expect(page.get_by_test_id("bar-topup")).to_have_attribute("aria-valuemax", "500.00")
    expect(page.get_by_test_id("topup-text")).to_have_text("15 of 500 used · 485 left")
    # The headline is what any tier can spend: the 485 top-up credits (the plan remainder is per tier).
    expect(page.get_by_test_id("spendable-credits")).to_have_text("485")
    expect(page.get_by_test_id("plan-left")).to_contain_text("2 Small · 1 Large actions")
    expect(page.get_by_test_id("usage-warnings")).to_contain_text("Medium")
    screenshot(page, "dashboard-with-usage")


def test_owner_toggles_auto_topup_and_member_gets_403(page, login, live_server, owner_membership, screenshot):
    from billing.models import CreditBalance
    from organizations.models import Role
    from organizations.tests.factories import MembershipFactory, UserFactory

    org = owner_membership.organization
    org.stripe_customer_id = "cus_dash_test"  # enabling needs a saved card; no charge happens here
    org.save(update_fields=["stripe_customer_id"])
    login(owner_membership)
    expect(page.get_by_test_id("auto-topup")).not_to_contain_text("Needs a saved card")
    card = page.get_by_test_id("auto-topup")
    card.get_by_label("Automatically buy credits").check()
    # 20 is below the fresh Free balance (45 credits): saving triggers no purchase.
    card.get_by_label("Threshold (credits)").fill("20")
    card.get_by_label("Packs per top-up").fill("2")
    card.get_by_label("Monthly cap (packs)").fill("6")
    card.get_by_role("button", name="Save auto top-up").click()
    expect(page.get_by_role("status").first).to_contain_text("Auto top-up settings saved")
    expect(card.get_by_label("Automatically buy credits")).to_be_checked()
    expect(card.get_by_label("Threshold (credits)")).to_have_value("20.00")
    balance = CreditBalance.objects.get(organization=owner_membership.organization)
    assert (balance.auto_topup_enabled, balance.auto_topup_threshold, balance.auto_topup_packs,
            balance.auto_topup_monthly_cap_packs) == (True, Decimal("20.00"), 2, 6)
    screenshot(page, "dashboard-auto-topup-on")

    # A member sees the state, not the form, and the endpoint refuses them.
    member = MembershipFactory(organization=owner_membership.organization, role=Role.MEMBER,
                               user=UserFactory(username="member@acme.test"))
    page.context.clear_cookies()
    login(member)
    expect(page.get_by_test_id("auto-topup-state")).to_contain_text("on: below 20.00 credits, buy 2 packs")
    expect(page.get_by_role("button", name="Save auto top-up")).to_have_count(0)
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    resp = page.request.post(f"{live_server.url}/api/billing/credits/auto-topup",
                             form={"org": "acme", "enabled": "false", "csrfmiddlewaretoken": csrf},
                             headers={"Referer": f"{live_server.url}/settings/billing"})
    assert resp.status == 403
    balance.refresh_from_db()
    assert balance.auto_topup_enabled is True


def test_refused_auto_topup_settings_keep_what_was_typed(page, login, owner_membership, screenshot):
    org = owner_membership.organization
    org.stripe_customer_id = "cus_dash_test"  # no charge: the settings are refused before anything is saved
    org.save(update_fields=["stripe_customer_id"])
    login(owner_membership)
    card = page.get_by_test_id("auto-topup")
    card.get_by_label("Automatically buy credits").check()
    card.get_by_label("Threshold (credits)").fill("75")
    card.get_by_label("Packs per top-up").fill("5")
    card.get_by_label("Monthly cap (packs)").fill("3")
    card.get_by_role("button", name="Save auto top-up").click()
    cap = card.get_by_label("Monthly cap (packs)")
    expect(cap).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#autotopup-cap-error")).to_have_text("The monthly cap must be at least the packs per top-up.")
    expect(cap).to_have_value("3")
    expect(card.get_by_label("Packs per top-up")).to_have_value("5")
    expect(card.get_by_label("Threshold (credits)")).to_have_value("75")
    expect(card.get_by_label("Automatically buy credits")).to_be_checked()
    screenshot(page, "dashboard-auto-topup-refused")
    from billing.models import AutoTopupSettingsChange, CreditBalance

    assert not CreditBalance.objects.filter(organization=org, auto_topup_enabled=True).exists()
    assert not AutoTopupSettingsChange.objects.filter(organization=org).exists()
