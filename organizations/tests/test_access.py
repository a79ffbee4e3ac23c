import pytest
from django.test import Client
from django.urls import path

from billing_project.urls import urlpatterns as project_urlpatterns
from organizations.access import org_view
from organizations.models import Role

from .factories import MembershipFactory, OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_login_page_accepts_credentials_and_lands_on_dashboard(client: Client):
    m = MembershipFactory(user=UserFactory(username="ada@example.test"))
    page = client.get("/login")
    assert page.status_code == 200 and b"Password" in page.content
    resp = client.post("/login", {"username": "ADA@example.test ", "password": "pw-12345-secret"}, follow=True)
    assert resp.status_code == 200
    assert resp.redirect_chain[-1][0] == "/settings/billing"
    assert m.organization.name.encode() in resp.content


def test_wrong_password_stays_on_login(client: Client):
    MembershipFactory(user=UserFactory(username="bob@example.test"))
    resp = client.post("/login", {"username": "bob@example.test", "password": "nope"})
    assert resp.status_code == 200
    assert b"didn&#x27;t match" in resp.content or b"didn't match" in resp.content
    assert "_auth_user_id" not in client.session


def test_dashboard_requires_login(client: Client):
    resp = client.get("/settings/billing")
    assert resp.status_code == 302 and resp["Location"].startswith("/login")


def test_other_org_is_404_for_non_member(client: Client):
    mine = MembershipFactory()
    other = OrganizationFactory()
    client.force_login(mine.user)
    assert client.get(f"/settings/billing?org={mine.organization.slug}").status_code == 200
    assert client.get(f"/settings/billing?org={other.slug}").status_code == 404
    assert client.get(f"/settings/billing?org={other.pk}").status_code == 404


@org_view(require_admin=True)
def _money_view(request, membership):
    from django.http import JsonResponse

    return JsonResponse({"org": membership.organization.slug})


#: The two test views plus the project's own URLs (error pages render the main navigation).
urlpatterns = [path("api/billing/test-money", _money_view), path("test-money", _money_view), *project_urlpatterns]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("role,expected", [(Role.OWNER, 200), (Role.ADMIN, 200), (Role.MEMBER, 403), (Role.VIEWER, 403)])
def test_money_moving_views_need_owner_or_admin(client: Client, role, expected):
    m = MembershipFactory(role=role)
    client.force_login(m.user)
    resp = client.get(f"/api/billing/test-money?org={m.organization.slug}")
    assert resp.status_code == expected
    if expected == 403:
        assert resp.json()["error"]["code"] == "FORBIDDEN_ROLE"
    assert client.get(f"/test-money?org={m.organization.slug}").status_code == expected


@pytest.mark.urls(__name__)
def test_api_views_answer_json_401_when_logged_out(client: Client):
    resp = client.get("/api/billing/test-money")
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "NOT_AUTHENTICATED"
