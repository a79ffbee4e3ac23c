"""Dashboard page states rendered by the server: trial countdown, past-due banner with grace end,
canceled banner, overage; members without money controls."""
import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from billing.services.balance import balance_charge, balance_set_plan
from billing.tests.factories import (
    AutoTopupSettingsChangeFactory,
    CreditPurchaseFactory,
    InvoiceFactory,
    SubscriptionFactory,
)
from organizations.models import PlanTier, Role, SubscriptionStatus
from organizations.tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def _sub(org, *, status, now, **extra):
    return SubscriptionFactory(
        organization=org, stripe_subscription_id=f"sub_{status}", stripe_customer_id="cus_1", plan_tier=PlanTier.PRO,
        status=status, current_period_start=now - dt.timedelta(days=3), current_period_end=now + dt.timedelta(days=27),
        created_at=now, **extra)


@pytest.fixture
def owner(client):
    m = MembershipFactory()
    client.force_login(m.user)
    return m


def test_trialing_shows_countdown_and_banner(client, owner):
    now = timezone.now()
    org = owner.organization
    org.subscription_tier, org.subscription_status = PlanTier.PRO, SubscriptionStatus.TRIALING
    org.trial_ends_at = now + dt.timedelta(days=2, hours=3)
    org.save()
    _sub(org, status="trialing", now=now, trial_end=org.trial_ends_at)
    html = client.get("/settings/billing").content.decode()
    assert "3 days left" in html
    assert "trial ends in 3 days" in html
    assert "$99.00" in html
    assert "Add a payment method to keep the plan" in html


def test_trialing_with_a_card_on_file_says_it_will_be_charged(client, owner):
    now = timezone.now()
    org = owner.organization
    org.subscription_tier, org.subscription_status = PlanTier.PRO, SubscriptionStatus.TRIALING
    org.trial_ends_at = now + dt.timedelta(days=2, hours=3)
    org.save()
    _sub(org, status="trialing", now=now, trial_end=org.trial_ends_at, default_payment_method_id="pm_123")
    html = client.get("/settings/billing").content.decode()
    assert "Your card on file will then be charged $99.00 a month." in html
    assert "Add a payment method" not in html


def test_past_due_shows_grace_end_banner(client, owner):
    now = timezone.now()
    org = owner.organization
    org.subscription_tier, org.subscription_status = PlanTier.PRO, SubscriptionStatus.PAST_DUE
    org.save()
    grace = dt.datetime(2030, 1, 9, 12, 0, tzinfo=dt.timezone.utc)
    _sub(org, status="past_due", now=now, grace_period_ends_at=grace)
    html = client.get("/settings/billing").content.decode()
    assert 'role="alert"' in html
    assert "Your last payment failed. The Pro plan keeps working until Jan 9, 2030." in html


def test_cancel_at_period_end_banner(client, owner):
    now = timezone.now()
    org = owner.organization
    org.subscription_tier = PlanTier.PRO
    org.save()
    sub = _sub(org, status="active", now=now, cancel_at_period_end=True)
    html = client.get("/settings/billing").content.decode()
    assert "plan ends on" in html and "moves to the Free plan" in html
    assert "Next billing date" not in html
    assert sub.current_period_end is not None


def test_overage_is_shown(client, owner, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 100  # xl: 1 included -> 1 action of overage allowed
    org = owner.organization
    now = timezone.now()
    balance_set_plan(organization_id=org.pk, plan_tier=PlanTier.FREE, now=now)
    for _ in range(2):
        with transaction.atomic():
            balance_charge(organization_id=org.pk, tier="xl", now=now)
    html = client.get("/settings/billing").content.decode()
    assert 'data-testid="overage"' in html
    assert "1 overage" in html


def test_member_page_has_no_money_forms(client):
    m = MembershipFactory(role=Role.MEMBER)
    client.force_login(m.user)
    html = client.get("/settings/billing").content.decode()
    assert "/api/billing/" not in html  # no form posts to money endpoints
    assert "Change plan" not in html
    assert client.post("/settings/api-keys/create", {"name": "x"}).status_code == 403


def test_invoices_page_lists_invoices_purchases_and_events_newest_first(client, owner):
    from decimal import Decimal

    now = timezone.now()
    org = owner.organization
    sub = _sub(org, status="past_due", now=now - dt.timedelta(days=40), trial_end=now - dt.timedelta(days=33),
               grace_period_ends_at=now + dt.timedelta(days=5))
    InvoiceFactory(
        organization=org, subscription=sub, stripe_invoice_id="in_paid", hosted_invoice_url="https://sim.test/i/in_paid",
        invoice_pdf="https://sim.test/i/in_paid.pdf", period_start=now - dt.timedelta(days=33),
        period_end=now - dt.timedelta(days=3), paid_at=now - dt.timedelta(days=33),
        created_at=now - dt.timedelta(days=33), updated_at=now)
    InvoiceFactory(organization=org, subscription=sub, stripe_invoice_id="in_open", status="open",
                   hosted_invoice_url="javascript:alert(1)", created_at=now - dt.timedelta(days=2), updated_at=now)
    CreditPurchaseFactory(organization=org, method="checkout", packs=2, credits=Decimal("1000.00"), amount_cents=4000,
                          status="succeeded", created_at=now - dt.timedelta(days=10),
                          completed_at=now - dt.timedelta(days=10))
    CreditPurchaseFactory(organization=org, kind="auto_topup", status="failed", failure_code="CARD_DECLINED",
                          failure_message="Your card was declined.", created_at=now - dt.timedelta(days=1),
                          completed_at=now - dt.timedelta(days=1))
    resp = client.get("/settings/invoices")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "$99.00" in html and 'href="https://sim.test/i/in_paid.pdf"' in html
    assert "javascript:" not in html                       # only http(s) links reach an href
    assert "$40.00" in html and "Your card was declined." in html
    events = resp.context["events"]
    assert [e.at for e in events] == sorted((e.at for e in events), reverse=True)
    texts = [e.text for e in events]
    assert "Auto top-up: 1 pack (500 credits, $20.00) — failed" in texts
    assert "Manual: 2 packs (1000 credits, $40.00) — succeeded" in texts
    assert "Invoice $99.00 paid" in texts and "Invoice $99.00 open" in texts
    assert "Subscribed to Pro with a free trial" in texts and "Pro trial ended" in texts
    assert any(t.startswith("Pro payment failed; grace period until") for t in texts)
    assert 'scope="col"' in html and "<caption" in html


def test_invoices_page_empty_and_other_org_404(client, owner):
    from organizations.tests.factories import OrganizationFactory

    html = client.get("/settings/invoices").content.decode()
    assert 'data-testid="invoices-empty"' in html and 'data-testid="events-empty"' in html
    assert client.get(f"/settings/invoices?org={OrganizationFactory().slug}").status_code == 404


# --- Error pages: they look like the app (not Django's bare defaults) ----------------------------

def test_404_page_looks_like_the_app(client, owner):
    from organizations.tests.factories import OrganizationFactory

    for path in ("/no-such-page", f"/settings/billing?org={OrganizationFactory().slug}"):
        resp = client.get(path)
        assert resp.status_code == 404, path
        html = resp.content.decode()
        assert 'href="/static/css/app.css"' in html and 'class="topbar"' in html, path
        assert "Page not found" in html and 'href="/settings/billing"' in html, path
        assert "Not Found</title>" not in html  # Django's bare default
    client.logout()
    assert "Page not found" in client.get("/no-such-page").content.decode()


def test_403_page_looks_like_the_app(client):
    m = MembershipFactory(role=Role.MEMBER)
    client.force_login(m.user)
    resp = client.post("/settings/api-keys/create", {"name": "x"})
    assert resp.status_code == 403
    html = resp.content.decode()
    assert 'href="/static/css/app.css"' in html and 'class="topbar"' in html
    assert "Only owners and admins of this organization may do that." in html
    assert 'href="/settings/billing"' in html


def test_500_page_looks_like_the_app_without_touching_the_database(rf, django_assert_num_queries):
    from django.views.defaults import server_error

    with django_assert_num_queries(0):
        resp = server_error(rf.get("/settings/billing"))
    assert resp.status_code == 500
    html = resp.content.decode()
    assert 'href="/static/css/app.css"' in html and "Agent Platform" in html
    assert "Something went wrong" in html and 'href="/settings/billing"' in html


def test_csrf_failure_page_looks_like_the_app_and_says_what_to_do():
    from django.test import Client

    m = MembershipFactory()
    client = Client(enforce_csrf_checks=True)
    client.force_login(m.user)
    resp = client.post("/settings/api-keys/create", {"name": "x"})  # e.g. a form left open past the session
    assert resp.status_code == 403
    html = resp.content.decode()
    assert 'href="/static/css/app.css"' in html and 'class="topbar"' in html
    assert "reload the page" in html.lower()


# --- Auto top-up form: a refused submission keeps what the admin typed and says why ------------

def _autotopup_form(html: str) -> str:
    start = html.index('class="autotopup-form"')
    return html[start:html.index("</form>", start)]


def test_auto_topup_form_error_keeps_the_input_and_points_at_the_field(client, owner):
    from billing.models import AutoTopupSettingsChange

    org = owner.organization
    org.stripe_customer_id = "cus_not_called"
    org.save()
    resp = client.post("/api/billing/credits/auto-topup", {
        "org": org.slug, "enabled": "true", "threshold": "75", "packs": "5", "monthly_cap_packs": "3"})
    assert resp.status_code == 400
    form = _autotopup_form(resp.content.decode())
    assert 'id="autotopup-enabled" name="enabled" value="true" checked' in form
    assert 'name="threshold"' in form and 'value="75"' in form
    assert 'name="packs"' in form and 'value="5"' in form
    cap = form[form.index('id="autotopup-cap"'):]
    cap = cap[:cap.index(">")]
    assert 'value="3"' in cap and 'aria-invalid="true"' in cap and 'aria-describedby="autotopup-cap-error"' in cap
    assert 'id="autotopup-cap-error"' in form
    assert "The monthly cap must be at least the packs per top-up." in form
    assert not AutoTopupSettingsChange.objects.filter(organization=org).exists()


def test_auto_topup_form_without_a_card_says_so_at_the_checkbox(client, owner):
    resp = client.post("/api/billing/credits/auto-topup", {
        "org": owner.organization.slug, "enabled": "true", "threshold": "30", "packs": "2", "monthly_cap_packs": "4"})
    assert resp.status_code == 409
    form = _autotopup_form(resp.content.decode())
    assert 'id="autotopup-enabled-error"' in form and "Add a card first" in form
    assert 'value="30"' in form and 'value="2"' in form and 'value="4"' in form


def test_auto_topup_threshold_input_has_the_servers_bounds(client, owner):
    form = _autotopup_form(client.get("/settings/billing").content.decode())
    assert 'min="10"' in form and 'max="500"' in form


def test_page_query_counts_do_not_grow_with_rows(client, owner, django_assert_max_num_queries):
    """Pinned with several rows per table (N+1 would scale with them): keys with their creators,
    invoices, purchases, subscriptions, settings changes; a user in two orgs (switcher shown)."""
    from organizations.models import ApiKey
    from organizations.tests.factories import UserFactory

    now = timezone.now()
    org = owner.organization
    MembershipFactory(user=owner.user, role=Role.ADMIN)  # a second org: the switcher lists both
    sub = _sub(org, status="active", now=now)
    for i in range(6):
        ApiKey.objects.create(organization=org, name=f"k{i}", prefix=f"qcount{i:02d}", secret_hash=f"{i}" * 64,
                              created_by=UserFactory(), created_at=now)
        InvoiceFactory(organization=org, subscription=sub, stripe_invoice_id=f"in_q{i}", paid_at=now, created_at=now)
        CreditPurchaseFactory(organization=org, method="checkout", status="succeeded", created_at=now, completed_at=now)
        AutoTopupSettingsChangeFactory(organization=org, created_at=now)
    for path, most in (("/settings/billing", 8), ("/billing", 6), ("/settings/invoices", 9),
                       ("/settings/api-keys", 6)):
        with django_assert_max_num_queries(most):
            resp = client.get(f"{path}?org={org.slug}")
        assert resp.status_code == 200, path


def test_org_switcher_on_a_page_answering_a_post_targets_the_get_page(client, owner):
    """After creating an API key or a refused auto top-up form, the page is the answer to a POST; the
    switcher (a GET form) must not send the user to that POST-only URL (405)."""
    import re

    MembershipFactory(user=owner.user, role=Role.ADMIN)  # two orgs: the switcher is shown
    slug = owner.organization.slug

    def switcher_action(html: str) -> str:
        return re.search(r'<form method="get" action="([^"]*)" class="org-switcher">', html).group(1)

    created = client.post("/settings/api-keys/create", {"org": slug, "name": "ci"})
    assert created.status_code == 200
    assert switcher_action(created.content.decode()) == "/settings/api-keys"
    assert 'href="/settings/api-keys?org=' in created.content.decode() and 'aria-current="page"' in created.content.decode()
    refused = client.post("/api/billing/credits/auto-topup", {
        "org": slug, "enabled": "true", "threshold": "30", "packs": "2", "monthly_cap_packs": "1"})
    assert refused.status_code == 400
    assert switcher_action(refused.content.decode()) == "/settings/billing"
    assert client.get(f"/settings/billing?org={slug}").status_code == 200
    assert switcher_action(client.get("/usage").content.decode()) == "/usage"
