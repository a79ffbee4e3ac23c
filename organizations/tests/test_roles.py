"""Members and viewers see the numbers but no money controls, and every money-moving endpoint refuses
them server-side (form posts and JSON alike), changing nothing."""
import json

import pytest

from billing.models import AutoTopupSettingsChange, CreditPurchase
from organizations.models import ApiKey, Role
from organizations.tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

MONEY_POSTS = [
    "/api/billing/checkout", "/api/billing/portal", "/api/billing/subscription/upgrade",
    "/api/billing/subscription/downgrade", "/api/billing/subscription/downgrade/cancel",
    "/api/billing/subscription/cancel", "/api/billing/credits/topup", "/api/billing/credits/auto-topup",
    "/settings/api-keys/create", "/billing/topups/1/finish",
]
PAGES = ["/settings/billing", "/billing", "/usage", "/settings/invoices", "/settings/api-keys"]


@pytest.fixture(params=[Role.MEMBER, Role.VIEWER])
def reader(request, client):
    m = MembershipFactory(role=request.param)
    MembershipFactory(organization=m.organization, role=Role.OWNER)
    ApiKey.objects.create(organization=m.organization, name="ci", prefix="rolepfx1", secret_hash="0" * 64,
                          created_at=m.organization.created_at)
    client.force_login(m.user)
    return m


def _nothing_changed(org):
    assert not CreditPurchase.objects.filter(organization=org).exists()
    assert not AutoTopupSettingsChange.objects.filter(organization=org).exists()
    assert ApiKey.objects.filter(organization=org).count() == 1
    assert ApiKey.objects.get(organization=org).revoked_at is None


@pytest.mark.parametrize("path", MONEY_POSTS)
def test_reader_is_refused_on_every_money_endpoint(client, reader, path):
    org = reader.organization
    body = {"org": org.slug, "orgId": str(org.pk), "plan": "pro", "packs": "1", "name": "x", "enabled": "true",
            "threshold": "50", "monthly_cap_packs": "10"}
    assert client.post(path, body).status_code == 403, path
    resp = client.post(path, json.dumps(body), content_type="application/json")
    assert resp.status_code == 403, path
    _nothing_changed(org)


def test_reader_cannot_revoke_a_key(client, reader):
    key = ApiKey.objects.get(organization=reader.organization)
    assert client.post(f"/settings/api-keys/{key.pk}/revoke", {"org": reader.organization.slug}).status_code == 403
    _nothing_changed(reader.organization)


def test_reader_pages_have_no_money_forms(client, reader):
    for path in PAGES:
        resp = client.get(path)
        assert resp.status_code == 200, path
        html = resp.content.decode()
        assert 'action="/api/billing/' not in html, path
        assert "/settings/api-keys/create" not in html and "/revoke" not in html, path
        assert "Change plan" not in html and "Buy 500 credits" not in html, path
