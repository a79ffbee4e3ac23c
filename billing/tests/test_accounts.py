"""Opening a billing account: the balance on Free and the welcome email, once; also from the admin."""
from __future__ import annotations

import re

import pytest
from django.core import mail

from billing.models import CreditBalance
from billing.services.accounts import billing_account_open
from organizations.models import Organization, Role
from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_opening_creates_the_free_balance_and_welcomes_owners_and_admins_once(now, django_capture_on_commit_callbacks):
    org = OrganizationFactory(name="Welcome Co")
    MembershipFactory(organization=org, user=UserFactory(username="own@welcome.test"), role=Role.OWNER)
    MembershipFactory(organization=org, user=UserFactory(username="mem@welcome.test"), role=Role.MEMBER)
    with django_capture_on_commit_callbacks(execute=True):
        balance = billing_account_open(organization_id=org.pk, now=now)
    assert (balance.plan_tier, balance.included_small) == ("free", 10)
    assert [m.to for m in mail.outbox] == [["own@welcome.test"]]
    assert "Welcome Co" in mail.outbox[0].body and "Free plan" in mail.outbox[0].body

    with django_capture_on_commit_callbacks(execute=True):
        again = billing_account_open(organization_id=org.pk, now=now)
    assert again.pk == balance.pk and len(mail.outbox) == 1  # idempotent: no second welcome
    assert CreditBalance.objects.filter(organization=org).count() == 1


def test_staff_adds_an_org_in_the_admin_with_its_owner_and_the_owner_is_welcomed(client,
                                                                                 django_capture_on_commit_callbacks):
    staff = UserFactory(username="ops@welcome.test", is_staff=True, is_superuser=True)
    owner = UserFactory(username="boss@welcome.test")
    client.force_login(staff)
    page = client.get("/admin/organizations/organization/add/")
    assert page.status_code == 200
    html = page.content.decode()
    data = {"name": "Admin Made Co", "slug": "admin-made"}
    for prefix in re.findall(r'name="([\w-]+)-TOTAL_FORMS"', html):  # every inline's management form
        data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
    data.update({"memberships-TOTAL_FORMS": "1", "memberships-0-user": str(owner.pk),
                 "memberships-0-role": Role.OWNER, "memberships-0-created_at_0": "2026-11-10",
                 "memberships-0-created_at_1": "12:00:00"})
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/admin/organizations/organization/add/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    org = Organization.objects.get(slug="admin-made")
    assert org.created_at is not None
    assert CreditBalance.objects.get(organization=org).plan_tier == "free"
    assert [m.to for m in mail.outbox] == [["boss@welcome.test"]]
