"""The usage HTTP API through Django's test client: status codes, JSON fields, auth, bad input."""
from __future__ import annotations

import json

import pytest

from billing.models import CreditBalance
from organizations.services import api_key_create
from organizations.tests.factories import OrganizationFactory
from usage.models import BillableAction

pytestmark = pytest.mark.django_db
TOKEN = "test-orchestrator-token"  # settings.test ORCHESTRATOR_SERVICE_TOKEN


def post(client, path, body, token=TOKEN, raw=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    data = raw if raw is not None else json.dumps(body)
    return client.post(f"/api/billing/usage/{path}", data=data, content_type="application/json", **headers)


def test_record_201_then_replay_200_with_the_first_body(client):
    org = OrganizationFactory()
    body = {"orgId": str(org.pk), "userId": 42, "actionTier": "medium", "idempotencyKey": "run-1:step-3",
            "metadata": {"model": "m"}}
    r1 = post(client, "record", body)
    assert r1.status_code == 201, r1.content
    j1 = r1.json()
    assert set(j1) == {"success", "actionId", "creditsUsed", "paidFrom", "remainingCredits", "topupRemaining"}
    assert j1["paidFrom"] == "plan" and j1["remainingCredits"] == {"small": 10, "medium": 3, "large": 2, "xl": 1}
    r2 = post(client, "record", body)
    assert r2.status_code == 200 and r2.json() == j1
    assert BillableAction.objects.get().user_id == "42"


def test_record_402_has_the_design_fields(client, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()
    body = {"orgId": str(org.pk), "userId": "u", "actionTier": "xl"}
    assert post(client, "record", body).json()["warning"] == "100percent"
    r = post(client, "record", body)
    assert r.status_code == 402
    j = r.json()
    assert j["success"] is False and j["error"]["code"] == "CREDITS_EXHAUSTED"
    assert {"remainingCredits", "suggestedPlan", "canTopUp", "upgradeUrl", "topUpUrl"} <= set(j)
    assert j["suggestedPlan"] == "starter"


def test_check_and_summary(client):
    org = OrganizationFactory()
    for _ in range(8):
        post(client, "record", {"orgId": str(org.pk), "userId": "u", "actionTier": "small"})
    r = post(client, "check", {"orgId": str(org.pk), "actionTier": "small"})
    assert r.status_code == 200 and r.json()["allowed"] is True and r.json()["warning"] == "80percent"
    s = client.get(f"/api/billing/usage?orgId={org.slug}", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert s.status_code == 200
    j = s.json()
    assert j["tiers"]["small"]["used"] == 8 and j["tiers"]["small"]["remaining"] == 2
    assert j["warnings"]["small"] == "80percent" and j["topupCredits"] == {"purchased": "0.00", "used": "0.00",
                                                                           "remaining": "0.00"}
    assert j["totalRemaining"] == "37.00" and set(j["period"]) == {"start", "end"}


def test_batch_endpoint(client, insert_path):
    org = OrganizationFactory()
    actions = [{"userId": "u", "actionTier": "xl", "idempotencyKey": f"k{i % 2}"} for i in range(4)]
    r = post(client, "record-batch", {"orgId": str(org.pk), "actions": actions})
    assert r.status_code == 200, r.content
    j = r.json()
    assert [i["status"] for i in j["results"]] == [201, 201, 200, 200]
    assert [i["paidFrom"] for i in j["results"]] == ["plan", "overage", "plan", "overage"]
    assert (j["recorded"], j["replayed"], j["refused"]) == (2, 2, 0)


def test_api_key_works_for_its_own_org_only(client, now):
    org, other = OrganizationFactory(), OrganizationFactory()
    token = api_key_create(organization=org, name="k", now=now).token
    r = post(client, "record", {"userId": "u", "actionTier": "small"}, token=token)  # orgId defaults to the key's
    assert r.status_code == 201
    r = post(client, "record", {"orgId": str(other.pk), "userId": "u", "actionTier": "small"}, token=token)
    assert r.status_code == 404 and r.json()["error"]["code"] == "ORG_NOT_FOUND"
    g = client.get(f"/api/billing/usage?orgId={other.pk}", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert g.status_code == 404
    assert BillableAction.objects.filter(organization=other).count() == 0


BAD = [
    ("no token", "record", None, None, 401, "MISSING_TOKEN"),
    ("wrong token", "record", "wrong", None, 401, "INVALID_SERVICE_TOKEN"),
    ("bad api key", "record", "bk_abc_def", None, 401, "INVALID_SERVICE_TOKEN"),
    ("wrong tier", "record", TOKEN, {"actionTier": "huge"}, 400, "INVALID_ACTION_TIER"),
    ("missing tier", "record", TOKEN, {"actionTier": None}, 400, "INVALID_ACTION_TIER"),
    ("missing user", "record", TOKEN, {"userId": None}, 400, "INVALID_REQUEST"),
    ("missing org", "record", TOKEN, {"orgId": None}, 400, "INVALID_REQUEST"),
    ("unknown org", "record", TOKEN, {"orgId": "0b3a7a52-2bd4-4cc1-9e2e-6a3f3e2e6c11"}, 404, "ORG_NOT_FOUND"),
    ("unknown slug", "record", TOKEN, {"orgId": "no-such-org"}, 404, "ORG_NOT_FOUND"),
    ("metadata list", "record", TOKEN, {"metadata": [1]}, 400, "INVALID_REQUEST"),
    ("metadata string", "record", TOKEN, {"metadata": "x"}, 400, "INVALID_REQUEST"),
    ("key too long", "record", TOKEN, {"idempotencyKey": "k" * 256}, 400, "INVALID_REQUEST"),
    ("key not a string", "record", TOKEN, {"idempotencyKey": 5}, 400, "INVALID_REQUEST"),
    ("non-json", "record", TOKEN, "RAW:{not json", 400, "INVALID_REQUEST"),
    ("json array", "record", TOKEN, "RAW:[1,2]", 400, "INVALID_REQUEST"),
    ("too large", "record", TOKEN, {"description": "x" * (65 * 1024)}, 413, "PAYLOAD_TOO_LARGE"),
    ("batch not a list", "record-batch", TOKEN, {"actions": {"a": 1}}, 400, "INVALID_REQUEST"),
    ("batch bad item", "record-batch", TOKEN, {"actions": [{"userId": "u", "actionTier": "small"},
                                                           {"userId": "u", "actionTier": "x"}]}, 400,
     "INVALID_ACTION_TIER"),
    ("batch too long", "record-batch", TOKEN, {"actions": [{"userId": "u", "actionTier": "small"}] * 1001}, 400,
     "INVALID_REQUEST"),
    ("check wrong tier", "check", TOKEN, {"actionTier": "xxl"}, 400, "INVALID_ACTION_TIER"),
]


@pytest.mark.parametrize(("case", "path", "token", "change", "status", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_with_a_stable_code_and_records_nothing(client, case, path, token, change, status, code):
    org = OrganizationFactory()
    body = {"orgId": str(org.pk), "userId": "u", "actionTier": "small"}
    raw = None
    if isinstance(change, str):
        raw = change.removeprefix("RAW:")
    elif change:
        body.update(change)
        body = {k: v for k, v in body.items() if v is not None}
    r = post(client, path, body, token=token, raw=raw)
    assert r.status_code == status, r.content
    assert r.json()["success"] is False and r.json()["error"]["code"] == code
    assert not BillableAction.objects.exists() and not CreditBalance.objects.exists()


def test_wrong_method_is_405(client):
    r = client.get("/api/billing/usage/record", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
