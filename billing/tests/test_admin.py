"""Admin pages: every registered model's changelist and change page render for staff and refuse non-staff."""
from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import RequestFactory
from django.urls import reverse

from billing.tests.admin_objects import make_one_of_each
from organizations.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = UserFactory(username="staff@example.test", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


@pytest.fixture
def objects(now):
    return make_one_of_each(now=now)


def _registered():
    return sorted(admin.site._registry, key=lambda m: m._meta.label)


def test_every_registered_billing_model_has_an_object_to_render(objects):
    ours = {m for m in _registered() if m._meta.app_label in {"billing", "usage", "organizations"}}
    missing = {m._meta.label for m in ours} - {type(o)._meta.label for o in objects}
    assert not missing, f"add these to admin_objects.make_one_of_each: {missing}"


@pytest.mark.parametrize("model", _registered(), ids=lambda m: m._meta.label)
def test_changelist_and_change_page_render_for_staff(staff_client, objects, model):
    info = (model._meta.app_label, model._meta.model_name)
    response = staff_client.get(reverse("admin:%s_%s_changelist" % info))
    assert response.status_code == 200, response.content[:500]
    # Search and filters go through the same page (a bad search_fields path raises here).
    response = staff_client.get(reverse("admin:%s_%s_changelist" % info), {"q": "org"})
    assert response.status_code == 200
    obj = next((o for o in objects if isinstance(o, model)), None)
    if obj is None:
        obj = model._default_manager.first()
    if obj is not None:
        response = staff_client.get(reverse("admin:%s_%s_change" % info, args=[obj.pk]))
        assert response.status_code == 200, response.content[:500]


@pytest.mark.parametrize("model", _registered(), ids=lambda m: m._meta.label)
def test_admin_pages_refuse_non_staff(client, objects, model):
    client.force_login(UserFactory(username="member@example.test", is_staff=False))
    info = (model._meta.app_label, model._meta.model_name)
    url = reverse("admin:%s_%s_changelist" % info)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_anonymous_is_sent_to_admin_login(client):
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_stripe_links_point_to_test_dashboard(staff_client, objects, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_123"
    response = staff_client.get(reverse("admin:billing_subscription_changelist"))
    assert b"https://dashboard.stripe.com/test/subscriptions/sub_admin_1" in response.content
    settings.STRIPE_SECRET_KEY = "sk_live_123"
    response = staff_client.get(reverse("admin:billing_invoice_changelist"))
    assert b"https://dashboard.stripe.com/invoices/in_admin_1" in response.content


def test_webhook_events_cannot_be_changed_or_deleted(staff_client, objects):
    from billing.models import WebhookEvent

    event = next(o for o in objects if isinstance(o, WebhookEvent))
    url = reverse("admin:billing_webhookevent_change", args=[event.pk])
    response = staff_client.post(url, {"status": "processed", "type": "x"})
    assert response.status_code == 403
    response = staff_client.post(reverse("admin:billing_webhookevent_delete", args=[event.pk]), {"post": "yes"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.status == "failed"


def test_grant_credits_action_changes_balance_and_leaves_audit_row(staff_client, objects):
    from decimal import Decimal

    from billing.models import CreditBalance, CreditPurchase
    from organizations.models import Organization

    org = Organization.objects.get(slug="admin-org")
    before = CreditBalance.objects.get(organization=org).topup_purchased
    url = reverse("admin:organizations_organization_changelist")
    # Step 1: the action shows the intermediate form; nothing is granted yet.
    response = staff_client.post(url, {"action": "grant_credits", "_selected_action": [org.pk]})
    assert response.status_code == 200 and b'name="credits"' in response.content and b'name="reason"' in response.content
    assert CreditBalance.objects.get(organization=org).topup_purchased == before
    # A missing reason is refused by the form.
    response = staff_client.post(url, {"action": "grant_credits", "_selected_action": [org.pk], "apply": "1",
                                       "credits": "100", "reason": ""})
    assert response.status_code == 200 and CreditBalance.objects.get(organization=org).topup_purchased == before
    # Step 2: confirmed.
    response = staff_client.post(url, {"action": "grant_credits", "_selected_action": [org.pk], "apply": "1",
                                       "credits": "100.50", "reason": "outage compensation"}, follow=True)
    assert response.status_code == 200
    balance = CreditBalance.objects.get(organization=org)
    assert balance.topup_purchased == before + Decimal("100.50")
    grant = CreditPurchase.objects.filter(organization=org, kind="grant").latest("id")
    assert (grant.credits, grant.reason, grant.created_by.username, grant.status, grant.amount_cents) == (
        Decimal("100.50"), "outage compensation", "staff@example.test", "succeeded", 0)
    assert grant.credits_applied_at is not None
    from usage.services_reconcile import reconcile_orgs

    assert reconcile_orgs(now=grant.created_at).drifts == []  # the grant is a fact the balance agrees with


@pytest.mark.parametrize("label", ["usage.billableaction", "billing.creditpurchase"])
def test_facts_cannot_be_changed_or_deleted_via_admin(staff_client, objects, label):
    from django.apps import apps

    model = apps.get_model(label)
    obj = next(o for o in objects if isinstance(o, model))
    info = (model._meta.app_label, model._meta.model_name)
    model_admin = admin.site._registry[model]
    request = RequestFactory().get("/admin/")
    request.user = get_user_model().objects.get(username="staff@example.test")
    assert not model_admin.has_change_permission(request, obj)
    assert not model_admin.has_delete_permission(request, obj)
    assert not model_admin.has_add_permission(request)
    page = staff_client.get(reverse("admin:%s_%s_change" % info, args=[obj.pk]))
    assert page.status_code == 200 and b'type="submit"' not in page.content.split(b'id="content"')[1]
    snapshot = {f.attname: getattr(obj, f.attname) for f in model._meta.concrete_fields}
    response = staff_client.post(reverse("admin:%s_%s_change" % info, args=[obj.pk]), {"credits": "999"})
    assert response.status_code == 403
    response = staff_client.post(reverse("admin:%s_%s_delete" % info, args=[obj.pk]), {"post": "yes"})
    assert response.status_code == 403
    response = staff_client.post(reverse("admin:%s_%s_changelist" % info),
                                 {"action": "delete_selected", "_selected_action": [obj.pk], "post": "yes"})
    obj.refresh_from_db()
    assert {f.attname: getattr(obj, f.attname) for f in model._meta.concrete_fields} == snapshot


def test_recompute_balance_action_fixes_drift(staff_client, objects):
    from billing.models import CreditBalance
    from organizations.models import Organization

    org = Organization.objects.get(slug="admin-org")
    CreditBalance.objects.filter(organization=org).update(used_small=7)
    response = staff_client.post(reverse("admin:organizations_organization_changelist"),
                                 {"action": "recompute_balance", "_selected_action": [org.pk]}, follow=True)
    assert response.status_code == 200 and b"used_small" in response.content
    assert CreditBalance.objects.get(organization=org).used_small == 1


def test_organization_page_shows_balance_inline(staff_client, objects):
    from organizations.models import Organization

    org = Organization.objects.get(slug="admin-org")
    page = staff_client.get(reverse("admin:organizations_organization_change", args=[org.pk])).content.decode()
    assert "small 1/10" in page and "Top-up remaining" in page and "sub_admin_1" in page
    assert "https://dashboard.stripe.com/test/customers/cus_admin_1" in page
