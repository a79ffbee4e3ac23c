"""The billing pages as a person sees them: dashboard, plan picker, API keys, roles, other orgs."""
import re

import pytest
from playwright.sync_api import expect

from organizations.models import ApiKey, PlanTier, Role
from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory

from .conftest import PHONE, log_in

pytestmark = pytest.mark.browser


def test_dashboard_shows_plan_and_one_bar_per_tier(logged_in_page, live_server, screenshot):
    page = logged_in_page
    expect(page).to_have_url(f"{live_server.url}/settings/billing")
    expect(page.get_by_test_id("plan-badge")).to_have_text("Free")
    for tier, included in (("small", 10), ("medium", 4), ("large", 2), ("xl", 1)):
        bar = page.get_by_test_id(f"bar-{tier}")
        expect(bar).to_have_attribute("role", "progressbar")
        expect(bar).to_have_attribute("aria-valuemax", str(included))
    expect(page.get_by_role("link", name="Change plan")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing")).to_have_attribute(
        "aria-current", "page")
    screenshot(page, "dashboard-owner")


def test_member_sees_numbers_without_money_controls_and_gets_403(page, live_server, owner_membership, screenshot):
    member = MembershipFactory(organization=owner_membership.organization, role=Role.MEMBER,
                               user=UserFactory(username="member@acme.test"))
    log_in(page, email=member.user.email)
    expect(page.get_by_test_id("bar-small")).to_be_visible()
    expect(page.locator("#read-only-note")).to_be_visible()
    for name in ("Change plan", "Manage payment method", re.compile("^Buy "), "Save auto top-up"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
        expect(page.get_by_role("link", name=name)).to_have_count(0)
    screenshot(page, "dashboard-member")

    page.goto("/billing")
    expect(page.get_by_test_id("current-plan")).to_be_visible()
    expect(page.locator("form button")).to_have_count(1)  # only "Log out"

    # A money-moving endpoint refuses the member even with a valid session + CSRF token.
    page.goto("/settings/api-keys")
    expect(page.get_by_role("button", name="Create key")).to_have_count(0)
    token = page.context.cookies()
    csrf = next(c["value"] for c in token if c["name"] == "csrftoken")
    resp = page.request.post(f"{live_server.url}/settings/api-keys/create",
                             form={"name": "sneaky", "org": "acme", "csrfmiddlewaretoken": csrf},
                             headers={"Referer": f"{live_server.url}/settings/api-keys"})
    assert resp.status == 403
    assert not ApiKey.objects.filter(name="sneaky").exists()


def test_other_orgs_pages_are_404(logged_in_page, live_server):
    other = OrganizationFactory(name="Other Co", slug="other")
    for path in ("/settings/billing", "/billing", "/settings/api-keys"):
        resp = logged_in_page.goto(f"{path}?org={other.slug}")
        assert resp.status == 404, path
        expect(logged_in_page.get_by_text("Other Co")).to_have_count(0)


def test_plan_picker_marks_current_plan_and_offers_trial(logged_in_page, live_server, owner_membership, screenshot):
    page = logged_in_page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Plans").click()
    expect(page).to_have_url(re.compile(r"/billing(\?|$)"))
    plans = page.locator("ul.plans > li")
    expect(plans).to_have_count(4)
    expect(page.locator("li[data-plan=free] [data-testid=current-plan]")).to_be_visible()
    for tier, price in (("starter", "$9.99"), ("pro", "$99.00"), ("max", "$499.99")):
        card = page.locator(f"li[data-plan={tier}]")
        expect(card).to_contain_text(price)
        expect(card.get_by_role("button")).to_have_text("Start 7-day trial")
    expect(page.locator("li[data-plan=pro]")).to_contain_text("2,500")
    expect(page.locator("li[data-plan=max]")).to_contain_text("49,500 credits")
    screenshot(page, "plans-free")

    # A Pro org that used its trial: Upgrade to Max, Downgrade to Starter / Free, no trial offered.
    org = owner_membership.organization
    org.subscription_tier, org.trial_ends_at = PlanTier.PRO, org.created_at
    org.save()
    page.reload()
    expect(page.locator("li[data-plan=pro] [data-testid=current-plan]")).to_be_visible()
    expect(page.locator("li[data-plan=max] button")).to_have_text("Upgrade to Max")
    expect(page.locator("li[data-plan=starter] button")).to_have_text("Downgrade to Starter")
    expect(page.locator("li[data-plan=free] button")).to_have_text("Downgrade to Free")
    expect(page.get_by_text("Start 7-day trial")).to_have_count(0)
    screenshot(page, "plans-pro")


def test_api_keys_create_shows_secret_once_then_revoke(logged_in_page, live_server, owner_membership, screenshot):
    page = logged_in_page
    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("Orchestrator prod")
    page.get_by_role("button", name="Create key").click()
    token = page.get_by_test_id("issued-token").input_value()
    key = ApiKey.objects.get(organization=owner_membership.organization, name="Orchestrator prod")
    assert token.startswith(f"bk_{key.prefix}_")
    screenshot(page, "api-keys-created")

    page.goto("/settings/api-keys")
    expect(page.get_by_test_id("issued-token")).to_have_count(0)
    assert token not in page.content()
    row = page.locator(f"tr[data-prefix='{key.prefix}']")
    expect(row).to_contain_text(f"bk_{key.prefix}_…")
    expect(row).to_contain_text("never")
    row.get_by_role("button", name=re.compile("^Revoke key")).click()
    expect(page.get_by_role("status")).to_contain_text("is revoked")
    expect(page.locator(f"tr[data-prefix='{key.prefix}']")).to_contain_text("Revoked")
    key.refresh_from_db()
    assert key.revoked_at is not None
    screenshot(page, "api-keys")


def test_dashboard_at_phone_width(logged_in_page, screenshot):
    page = logged_in_page
    page.set_viewport_size(PHONE)
    page.goto("/settings/billing")
    expect(page.get_by_test_id("bar-xl")).to_be_visible()
    # Nothing wider than the screen: no horizontal scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "dashboard-phone")
    page.goto("/billing")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "plans-phone")


def test_org_switcher_for_users_with_several_orgs(logged_in_page, owner_membership):
    page = logged_in_page
    second = OrganizationFactory(name="Beta Labs", slug="beta")
    MembershipFactory(organization=second, user=owner_membership.user, role=Role.ADMIN)
    page.goto("/settings/billing")
    page.get_by_label("Organization").select_option("beta")
    page.get_by_role("button", name="Switch").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Beta Labs")
    expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Plans")).to_have_attribute(
        "href", "/billing?org=beta")


def test_every_page_with_data_fits_a_phone(logged_in_page, owner_membership, screenshot):
    """No horizontal scrolling at 375 px on any page, with rows in every table (an invoice with its
    View/PDF links, a failed purchase, actions, an API key)."""
    import datetime as dt
    from decimal import Decimal

    from django.utils import timezone

    from billing.models import CreditPurchase, Invoice
    from usage.services import action_record

    org, now = owner_membership.organization, timezone.now()
    Invoice.objects.create(
        organization=org, stripe_invoice_id="in_phone_1", amount_due_cents=9900, amount_paid_cents=9900, status="paid",
        hosted_invoice_url="https://sim.test/i/in_phone_1", invoice_pdf="https://sim.test/i/in_phone_1.pdf",
        period_start=now - dt.timedelta(days=30), period_end=now, paid_at=now, created_at=now, updated_at=now)
    CreditPurchase.objects.create(
        organization=org, kind="auto_topup", method="saved_card", packs=1, credits=Decimal("500.00"),
        amount_cents=2000, status="failed", failure_code="CARD_DECLINED", failure_message="Your card was declined.",
        created_at=now, completed_at=now)
    for tier in ("small", "medium", "large", "xl"):
        action_record(organization_id=org.pk, user_id="user-with-a-rather-long-id", tier=tier, agent_id="agent-1",
                      agent_name="Research agent", description="Summarised a long document " * 4, now=now)
    ApiKey.objects.create(organization=org, name="Orchestrator production", prefix="phonepfx",
                          secret_hash="0" * 64, created_at=now)
    page = logged_in_page
    page.set_viewport_size(PHONE)
    for path in ("/settings/billing", "/billing", "/usage", "/settings/invoices", "/settings/api-keys"):
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        screenshot(page, f"phone{path.replace('/', '-')}")
        assert width <= PHONE["width"], f"{path} scrolls sideways: {width}px"
