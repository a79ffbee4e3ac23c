"""Logging in through the real form lands on the billing dashboard."""
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_login_form_lands_on_dashboard(page, live_server, owner_membership, screenshot):
    page.goto("/settings/billing")
    expect(page).to_have_url(f"{live_server.url}/login?next=/settings/billing")
    screenshot(page, "login")
    page.get_by_label("Email").fill("OWNER@acme.test")
    page.get_by_label("Password").fill("pw-12345-secret")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server.url}/settings/billing")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Acme Robotics")


def test_wrong_password_is_refused(page, live_server, owner_membership):
    page.goto("/login")
    page.get_by_label("Email").fill("owner@acme.test")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")
    expect(page).to_have_url(f"{live_server.url}/login")
