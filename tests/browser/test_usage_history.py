"""Usage history in the browser: chart bars per day with usage, per-user table, filters, keyset pages,
CSV download; invoices page empty state; phone width."""
from __future__ import annotations

import csv
import datetime as dt
import re
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from billing.services.balance import balance_add_topup_credits
from usage.services import action_record

from .conftest import PHONE

pytestmark = pytest.mark.browser


@pytest.fixture
def org_with_usage(owner_membership):
    """The owner's org (Free, period started 10 days ago) with 60 actions on 3 UTC days, 3 users."""
    org = owner_membership.organization
    now = timezone.now()
    org.created_at = now - dt.timedelta(days=10)
    org.save(update_fields=["created_at"])
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("1000.00"), now=now - dt.timedelta(days=10))
    tiers = ["small", "small", "medium", "large", "xl"]
    days = [now - dt.timedelta(days=9), now - dt.timedelta(days=5), now - dt.timedelta(hours=1)]
    for d, when in enumerate(days):
        for i in range(20):
            action_record(organization_id=org.pk, user_id=f"user-{(i + d) % 3}", tier=tiers[i % 5],
                          agent_id="summarizer" if i % 2 else "coder", agent_name=None,
                          description=f"day {d} action {i}", now=when + dt.timedelta(seconds=i))
    return org


def test_usage_chart_users_filters_pages_and_csv(logged_in_page, org_with_usage, screenshot, tmp_path):
    page = logged_in_page
    page.get_by_test_id("usage-history-link").click()
    expect(page).to_have_url(re.compile(r"/usage\?org=acme"))
    chart = page.get_by_test_id("usage-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("g.bar")).to_have_count(3)
    # 3 days x 20 actions: 8 small, 4 medium, 4 large, 4 xl per day = 8 + 10 + 20 + 60 = 98 credits a day.
    for bar in chart.locator("g.bar").all():
        expect(bar).to_have_attribute("data-credits", "98.00")
        expect(bar.locator("rect")).to_have_count(4)
    expect(page.get_by_test_id("chart-total-credits")).to_have_text("294")
    expect(page.locator("#chart-title")).to_have_count(1)
    expect(page.get_by_test_id("users-table").locator("tbody tr")).to_have_count(3)
    screenshot(page, "usage")

    # Filters: XL (i % 5 == 4) actions of the summarizer agent (odd i): i = 9 and 19 on each day.
    page.get_by_label("Tier", exact=True).select_option("xl")
    page.get_by_label("Agent id").fill("summarizer")
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"tier=xl"))
    rows = page.get_by_test_id("actions-table").locator("tbody tr")
    expect(rows).to_have_count(6)
    expect(rows.first).to_contain_text("day 2 action 19")

    with page.expect_download() as info:
        page.get_by_test_id("export-csv").click()
    download = info.value
    assert re.fullmatch(r"usage-acme-\d{8}-\d{6}\.csv", download.suggested_filename)
    path = tmp_path / "usage.csv"
    download.save_as(path)
    with open(path, newline="") as f:
        data = list(csv.DictReader(f))
    assert [r["description"] for r in data][:2] == ["day 2 action 19", "day 2 action 9"]
    assert {r["tier"] for r in data} == {"xl"} and {r["agent_id"] for r in data} == {"summarizer"}
    assert len(data) == 6
    # Free plan: its 1 XL action went to the coder agent; every summarizer XL action took 15 top-up credits.
    assert [r["credits_charged"] for r in data] == ["15.00"] * 6

    # Keyset pages (50 a page) over all 60 actions: Older, then Newer back to the first page.
    page.get_by_role("link", name="Clear").click()
    expect(page.get_by_test_id("actions-table").locator("tbody tr")).to_have_count(50)
    first_id = page.get_by_test_id("actions-table").locator("tbody tr").first.get_attribute("data-action")
    page.get_by_role("link", name="Older →").click()
    expect(page.get_by_test_id("actions-table").locator("tbody tr")).to_have_count(10)
    page.get_by_role("link", name="← Newer").click()
    expect(page.get_by_test_id("actions-table").locator("tbody tr").first).to_have_attribute("data-action", first_id)


def test_usage_and_invoices_at_phone_width(logged_in_page, org_with_usage, screenshot):
    page = logged_in_page
    page.set_viewport_size(PHONE)
    page.goto("/usage")
    expect(page.get_by_test_id("usage-chart")).to_be_visible()
    # The page itself never scrolls sideways; the chart and tables scroll inside their boxes.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # The chart keeps a readable size and scrolls sideways inside its own box.
    assert page.get_by_test_id("usage-chart").bounding_box()["width"] >= 600
    screenshot(page, "usage-phone")
    screenshot(page, "usage-phone-top", full_page=False)
    page.goto("/settings/invoices")
    expect(page.get_by_test_id("invoices-empty")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "invoices-empty-phone")


def test_keyboard_focus_is_visible_on_usage_controls(logged_in_page, org_with_usage):
    page = logged_in_page
    page.goto("/usage")
    page.get_by_label("Tier", exact=True).focus()
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    page.get_by_test_id("export-csv").focus()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
