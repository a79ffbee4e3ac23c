"""Every billing email kind renders (subject, text, HTML) with a sample context and goes to the
org's owners and admins only."""
import pytest
from django.core import mail
from django.template.loader import get_template

from billing.emails import email_send_to_org_admins
from billing.notifications import notify_org_admins
from organizations.models import Role
from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

GRACE = "2026-11-17T12:00:00+00:00"
INVOICE_URL = "https://invoice.stripe.test/i/in_123"

#: kind -> (sample context as it crosses the broker (JSON), strings the subject must contain,
#:          strings the text body must contain)
SAMPLES = {
    "welcome": ({}, ["Welcome"], ["Free plan", "10 small, 4 medium, 2 large and 1 XL"]),
    "trial_ending": ({"plan": "pro", "trial_ends_at": GRACE, "days_left": 2},
                     ["Pro trial", "in 2 days"], ["Nov 17, 2026", "Add a payment method"]),
    "trial_ended": ({"previous_plan": "Pro", "reason": "canceled"}, ["Pro trial has ended"], ["Free plan"]),
    "usage_80": ({"tier": "medium", "percent": 80, "used": 800, "included": 1000},
                 ["80%", "Medium"], ["800 of 1000"]),
    "usage_100": ({"tier": "xl", "percent": 100, "used": 160, "included": 160}, ["all of its XL"], ["160 of 160"]),
    "overage": ({"tier": "large", "overage": 3, "limit": 50}, ["overage", "Large"], ["3 actions of 50", "not charged"]),
    "tier_blocked": ({"tier": "xl", "blocked_at": GRACE, "used": 160, "included": 160, "overage": 16, "limit": 16,
                      "topup_remaining": "8.50", "credit_cost": "15.00", "owed": "240.00", "suggested_plan": "max",
                      "period_end": GRACE}, ["XL actions are blocked"],
                     ["Since Nov 17, 2026 at 12:00 UTC", "160 of 160", "16 of 16", "Buy credits", "upgrade to Max",
                      "settles the 240 credits of overage owed", "#credits"]),
    "topup_done": ({"credits": "1000.00", "amount_cents": 4000, "packs": 2, "auto": True},
                   ["1,000 credits"], ["Auto top-up bought 2 packs", "$40.00"]),
    "topup_failed": ({"amount_cents": 2000, "reason": "Your card was declined.", "failures": 3, "disabled": True},
                     ["Auto top-up switched off"], ["$20.00", "card was declined", "3 failures in a row"]),
    "topup_auto_disabled": ({"failures": 3}, ["Auto top-up switched off"], ["3 times in a row"]),
    "topup_needs_auth": ({"amount_cents": 2000, "action_url": "https://pay.stripe.test/auth/pi_1"},
                         ["Confirm the $20.00"], ["https://pay.stripe.test/auth/pi_1"]),
    "receipt": ({"amount_cents": 9900, "plan": "pro", "number": "INV-0007", "hosted_invoice_url": INVOICE_URL,
                 "invoice_pdf": INVOICE_URL + "/pdf", "period_end": GRACE},
                ["$99.00", "INV-0007"], ["Pro plan", INVOICE_URL + "/pdf", INVOICE_URL]),
    "payment_failed": ({"amount_cents": 49999, "plan": "max", "hosted_invoice_url": INVOICE_URL,
                        "grace_ends_at": GRACE}, ["Payment failed"], ["$499.99", "Max plan", "Nov 17, 2026", INVOICE_URL]),
    "grace_ending": ({"plan": "starter", "grace_ends_at": GRACE, "hosted_invoice_url": INVOICE_URL,
                      "amount_cents": 999}, ["moves to Free", "Nov 17, 2026"], ["Starter", "$9.99", INVOICE_URL]),
    "downgraded_free": ({"previous_plan": "pro", "reason": "unpaid"}, ["Free plan"],
                        ["from the Pro plan", "grace period"]),
    "subscription_canceled": ({"plan": "Pro", "ends_at": GRACE, "immediate": False},
                              ["Pro subscription ends Nov 17, 2026"], ["keeps working"]),
}


@pytest.fixture
def org_with_roles():
    org = OrganizationFactory(name="Smith & Co", slug="smith")
    for role, email in ((Role.OWNER, "owner@smith.test"), (Role.ADMIN, "admin@smith.test"),
                        (Role.MEMBER, "member@smith.test"), (Role.VIEWER, "viewer@smith.test")):
        MembershipFactory(organization=org, role=role, user=UserFactory(username=email))
    return org


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_kind_renders_and_goes_to_owners_and_admins_only(kind, org_with_roles):
    context, subject_bits, text_bits = SAMPLES[kind]
    for suffix in ("subject.txt", "txt", "html"):
        get_template(f"emails/{kind}.{suffix}")  # exists: no generic fallback used

    sent = email_send_to_org_admins(organization=org_with_roles, kind=kind, context=context)

    assert sent == 2
    assert len(mail.outbox) == 1
    msg = mail.outbox[0]
    assert sorted(msg.to) == ["admin@smith.test", "owner@smith.test"]
    assert "\n" not in msg.subject and len(msg.subject) < 120
    for bit in subject_bits:
        assert bit in msg.subject, (kind, msg.subject)
    for bit in text_bits:
        assert bit in msg.body, (kind, bit, msg.body)
    # Plain text is not HTML-escaped; the dashboard link is there; no template syntax leaked.
    assert "&amp;" not in msg.body + msg.subject and "&#" not in msg.body
    assert "http://testserver" not in msg.body
    assert "/settings/billing?org=smith" in msg.body
    assert "{{" not in msg.body and "{%" not in msg.body
    (html, mimetype), = msg.alternatives
    assert mimetype == "text/html"
    assert html.lstrip().startswith("<!doctype html>")
    assert "Smith &amp; Co" in html  # escaped in HTML
    assert 'href="' in html and "{{" not in html and "{%" not in html


def test_html_call_to_action_points_at_the_invoice_when_there_is_one(org_with_roles):
    email_send_to_org_admins(organization=org_with_roles, kind="payment_failed",
                             context=SAMPLES["payment_failed"][0])
    html = mail.outbox[0].alternatives[0][0]
    assert f'href="{INVOICE_URL}"' in html
    assert "Nov 17, 2026 at 12:00 UTC" in html


def test_notify_org_admins_sends_on_commit_through_the_task(org_with_roles, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        notify_org_admins(organization_id=org_with_roles.pk, kind="usage_100",
                          context={"tier": "small", "percent": 100, "used": 10, "included": 10})
        assert mail.outbox == []  # nothing before commit
    assert len(mail.outbox) == 1
    assert "all of its Small actions" in mail.outbox[0].subject
    assert "member@smith.test" not in mail.outbox[0].to


#: Contexts exactly as the producing services send them (other key names; amounts from packs).
PRODUCER_CONTEXTS = {
    "payment_failed": ({"amount": "$99.00", "amount_due_cents": 9900, "invoice_url": INVOICE_URL,
                        "fix_url": INVOICE_URL, "grace_period_ends_at": GRACE, "plan": "Pro"},
                       ["$99.00", "Nov 17, 2026", INVOICE_URL]),
    "grace_ending": ({"grace_period_ends_at": GRACE, "plan": "Pro"}, ["Nov 17, 2026", "Pro"]),
    "receipt": ({"amount": "$99.00", "amount_paid_cents": 9900, "invoice_url": INVOICE_URL,
                 "invoice_pdf": INVOICE_URL + "/pdf", "stripe_invoice_id": "in_1", "period_start": GRACE,
                 "period_end": GRACE}, ["$99.00", INVOICE_URL]),
    "trial_ending": ({"plan": "Starter", "trial_end": GRACE, "has_payment_method": True, "price": "$9.99"},
                     ["Nov 17, 2026", "charged $9.99"]),
    "topup_done": ({"purchase_id": 5, "kind": "manual", "packs": 3, "credits": "1500.00"}, ["1,500 credits", "$60.00"]),
    "topup_failed": ({"purchase_id": 5, "packs": 1, "credits": "500.00", "failure_code": "card_declined",
                      "failure_message": "Your card was declined.", "billing_url": "x"},
                     ["$20.00", "Your card was declined."]),
    "topup_needs_auth": ({"purchase_id": 5, "packs": 1, "credits": "500.00",
                          "finish_url": "http://127.0.0.1:8000/billing/topups/5/finish"},
                         ["$20.00", "/billing/topups/5/finish"]),
    "usage_80": ({"tier": "small", "used": 8, "included": 10, "overage": 0, "topup_remaining": "0.00",
                  "period_end": GRACE}, ["80%", "8 of 10"]),
}


@pytest.mark.parametrize("kind", sorted(PRODUCER_CONTEXTS))
def test_producers_context_keys_render(kind, org_with_roles):
    context, bits = PRODUCER_CONTEXTS[kind]
    email_send_to_org_admins(organization=org_with_roles, kind=kind, context=context)
    msg = mail.outbox[0]
    for bit in bits:
        assert bit in msg.subject + msg.body, (kind, bit, msg.subject, msg.body)
