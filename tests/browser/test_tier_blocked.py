"""A blocked tier in the browser: after the orchestrator's real 402, the dashboard says "blocked since"
for that tier with the fix (buy credits / upgrade), a banner, and a headline of spendable credits only."""
from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from billing.models import CreditBalance
from billing.services.balance import balance_set_plan
from organizations.models import PlanTier

pytestmark = pytest.mark.browser
TOKEN = "test-orchestrator-token"  # settings.test ORCHESTRATOR_SERVICE_TOKEN
UTC = dt.timezone.utc


def test_dashboard_shows_blocked_since_and_the_banner(page, login, live_server, owner_membership, now, screenshot):
    org = owner_membership.organization
    org.subscription_tier = PlanTier.PRO
    org.save(update_fields=["subscription_tier"])
    balance_set_plan(organization_id=org.pk, plan_tier="pro", period_start=dt.datetime(2026, 11, 3, tzinfo=UTC),
                     period_end=dt.datetime(2026, 12, 3, tzinfo=UTC), reset_usage=True, now=now)
    # An org whose XL tier is blocked: XL allowance and buffer used, 8.50 credits left, 200 medium actions used.
    CreditBalance.objects.filter(organization=org).update(
        used_xl=160, overage_xl=16, overage_credits_owed=Decimal("240.00"), used_medium=200,
        topup_purchased=Decimal("508.50"), topup_used=Decimal("500.00"))

    # The orchestrator is refused over real HTTP (the live server's usage API).
    resp = page.request.post(f"{live_server.url}/api/billing/usage/record",
                             data={"orgId": str(org.pk), "userId": "agent-runner", "actionTier": "xl"},
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 402 and resp.json()["error"]["code"] == "CREDITS_EXHAUSTED"
    blocked_at = CreditBalance.objects.get(organization=org).blocked_xl_at
    assert blocked_at is not None
    since = f"{blocked_at:%H:%M} UTC"

    login(owner_membership)
    banner = page.locator("[data-banner=tier-blocked]")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text(f"XL actions are blocked since {since}")
    expect(banner.get_by_role("link", name="Buy credits")).to_have_attribute("href", "#credits")
    expect(banner.get_by_role("link", name="Upgrade to Max")).to_be_visible()

    xl = page.get_by_test_id("next-xl")
    expect(xl).to_contain_text(f"Blocked since {since}")
    expect(xl.get_by_role("link", name="Buy credits")).to_be_visible()
    expect(page.get_by_test_id("next-small")).to_contain_text("Paid from the plan allowance (2,500 left)")
    expect(page.get_by_test_id("next-medium")).to_contain_text("Paid from the plan allowance (800 left)")
    # The headline counts only spendable credits, never other tiers' plan allowance.
    expect(page.get_by_test_id("spendable-credits")).to_have_text("8.50")
    expect(page.locator("main")).not_to_contain_text("7,008.50")
    expect(page.locator("main")).not_to_contain_text("XL: running on overage")
    screenshot(page, "dashboard-tier-blocked")

    # The fix is one click away: "Upgrade to Max" opens the plan picker.
    banner.get_by_role("link", name="Upgrade to Max").click()
    page.wait_for_url(re.compile(r"/billing\?org=acme"))
    expect(page.locator("li[data-plan=max]")).to_be_visible()
