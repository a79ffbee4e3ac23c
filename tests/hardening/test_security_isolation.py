"""Org isolation on every org-scoped page and endpoint, found by walking the URLConf.

For each route: a logged-in owner of org B asking for org A's data gets 404 (A does not exist for
them) and A's data is unchanged; for the usage API, B's API key naming A gets 404 ORG_NOT_FOUND, an
unknown token 401, and the orchestrator's service token reaches A (by design: it serves every org).
A new route fails `test_every_route_is_classified` until it gets an isolation case here."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.test import Client

from billing.models import CreditPurchase, PurchaseKind, PurchaseMethod, PurchaseStatus
from organizations.models import ApiKey, Role
from organizations.services import api_key_create
from organizations.tests.factories import MembershipFactory

from .support import ORCHESTRATOR_TOKEN, db_snapshot, url_routes

pytestmark = pytest.mark.django_db

#: Routes with no org in them.
UNSCOPED = {"healthz", "home", "login", "logout", "stripe-webhook"}
#: name -> (method, path template, org given as ...). {a} = org A's slug, {key} / {purchase} = A's objects.
PAGE_CASES = {
    "billing-dashboard": ("GET", "/settings/billing?org={a}"),
    "billing-plans": ("GET", "/billing?org={a}"),
    "billing-invoices": ("GET", "/settings/invoices?org={a}"),
    "usage-history": ("GET", "/usage?org={a}"),
    "usage-export": ("GET", "/usage/export.csv?org={a}"),
    "api-keys": ("GET", "/settings/api-keys?org={a}"),
    "api-key-create": ("POST", "/settings/api-keys/create"),
    "api-key-revoke": ("POST", "/settings/api-keys/{key}/revoke"),  # A's key, in B's own org context
    "credits-topup": ("POST", "/api/billing/credits/topup"),
    "credits-auto-topup": ("POST", "/api/billing/credits/auto-topup"),
    "credits-history": ("GET", "/api/billing/credits/history?orgId={a}"),
    "topup-finish": ("GET", "/billing/topups/{purchase}/finish"),  # A's purchase, in B's own org context
    "billing-api-checkout": ("POST", "/api/billing/checkout"),
    "billing-api-portal": ("POST", "/api/billing/portal"),
    "billing-api-upgrade": ("POST", "/api/billing/subscription/upgrade"),
    "billing-api-cancel": ("POST", "/api/billing/subscription/cancel"),
    "billing-api-downgrade": ("POST", "/api/billing/subscription/downgrade"),
    "billing-api-downgrade-cancel": ("POST", "/api/billing/subscription/downgrade/cancel"),
    "billing-api-status": ("GET", "/api/billing/subscription/status?orgId={a}"),
}
#: The usage API: bearer-token auth, org in the body / query.
API_CASES = {
    "usage-record": ("POST", "/api/billing/usage/record"),
    "usage-record-batch": ("POST", "/api/billing/usage/record-batch"),
    "usage-check": ("POST", "/api/billing/usage/check"),
    "usage-summary": ("GET", "/api/billing/usage?orgId={a}"),
}


def test_every_route_is_classified():
    names = {name for name, _, _ in url_routes()}
    assert "" not in names, "every route needs a name (the security tests key on it)"
    assert names == UNSCOPED | set(PAGE_CASES) | set(API_CASES), (
        f"new: {sorted(names - UNSCOPED - set(PAGE_CASES) - set(API_CASES))}; "
        f"gone: {sorted((UNSCOPED | set(PAGE_CASES) | set(API_CASES)) - names)}")


@pytest.fixture
def two_orgs(now):
    a = MembershipFactory(role=Role.OWNER)
    b = MembershipFactory(role=Role.OWNER)
    org_a, org_b = a.organization, b.organization
    key_a = api_key_create(organization=org_a, name="a", now=now)
    key_b = api_key_create(organization=org_b, name="b", now=now)
    purchase_a = CreditPurchase.objects.create(
        organization=org_a, kind=PurchaseKind.AUTO_TOPUP, method=PurchaseMethod.SAVED_CARD, packs=1,
        credits=Decimal("500.00"), amount_cents=2000, status=PurchaseStatus.REQUIRES_ACTION, open_slot=True,
        created_at=now)
    return {"a": a, "b": b, "key_a": key_a, "key_b": key_b, "purchase_a": purchase_a}


def _a_state(w) -> tuple:
    org = w["a"].organization
    return (db_snapshot(), tuple(ApiKey.objects.filter(organization=org).values_list("pk", "revoked_at")),
            tuple(CreditPurchase.objects.filter(organization=org).values_list("pk", "status")))


@pytest.mark.parametrize("name", sorted(PAGE_CASES))
def test_another_orgs_user_gets_404(two_orgs, name):
    w = two_orgs
    method, template = PAGE_CASES[name]
    org_a = w["a"].organization
    path = template.format(a=org_a.slug, key=w["key_a"].api_key.pk, purchase=w["purchase_a"].pk)
    client = Client()
    client.force_login(w["b"].user)
    before = _a_state(w)
    if method == "GET":
        r = client.get(path)
    else:
        body = {} if "{key}" in template else {"org": org_a.slug, "plan": "pro", "packs": "1", "enabled": "true",
                                                 "name": "stolen"}
        r = client.post(path, data=body)
    assert r.status_code == 404, (name, r.status_code, r.content[:300])
    assert _a_state(w) == before
    # Control: the same user reaches their own org's version of the page (the 404 is about A, not the route).
    if method == "GET":
        own = client.get(template.format(a=w["b"].organization.slug, key=0, purchase=0))
        assert own.status_code != 404 or "{purchase}" in template, (name, own.status_code)


def _api_request(client, method, template, *, org_ref, token):
    path = template.format(a=org_ref)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if method == "GET":
        return client.get(path, **headers)
    body = {"orgId": org_ref, "userId": "u", "actionTier": "small",
            "actions": [{"userId": "u", "actionTier": "small"}]}
    return client.post(path, data=json.dumps(body), content_type="application/json", **headers)


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_usage_api_isolation(two_orgs, name):
    w = two_orgs
    method, template = API_CASES[name]
    client = Client()
    org_a = w["a"].organization
    for ref in (str(org_a.pk), org_a.slug):
        before = _a_state(w)
        r = _api_request(client, method, template, org_ref=ref, token=w["key_b"].token)  # B's key, A's org
        assert r.status_code == 404 and r.json()["error"]["code"] == "ORG_NOT_FOUND", (name, r.content)
        assert _a_state(w) == before
    r = _api_request(client, method, template, org_ref=str(org_a.pk), token="bk_" + w["key_a"].token[3:-1] + "x")
    assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_SERVICE_TOKEN"
    # A's own key and the orchestrator (any org, by design) both reach A.
    for token in (w["key_a"].token, ORCHESTRATOR_TOKEN):
        r = _api_request(client, method, template, org_ref=str(org_a.pk), token=token)
        assert r.status_code in (200, 201), (name, r.content)


def test_revoked_key_is_refused(two_orgs, now):
    from organizations.services import api_key_revoke

    w = two_orgs
    api_key_revoke(organization=w["a"].organization, key_id=w["key_a"].api_key.pk, now=now)
    r = _api_request(Client(), "GET", API_CASES["usage-summary"][1], org_ref=str(w["a"].organization.pk),
                     token=w["key_a"].token)
    assert r.status_code == 401 and r.json()["error"]["code"] == "INVALID_SERVICE_TOKEN"
