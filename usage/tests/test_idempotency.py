"""Idempotency keys of the usage API (DESIGN "Rules of the credit engine"): an opaque, case-sensitive
byte string, bound to its request. Through the HTTP API (Django's test client, real MariaDB), the
coalesced path and the single-record fast path; batches over both ways of inserting rows."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection

from billing.models import CreditBalance
from billing.services.balance import balance_add_topup_credits
from organizations.tests.factories import OrganizationFactory
from usage import coalesce, services
from usage.models import BillableAction
from usage.services import ActionInput, action_record
from usage.tests.test_api import post

pytestmark = pytest.mark.django_db

# Reported: these three gave ONE row under utf8mb4_unicode_ci; the xl and large were never billed.
CASE_KEYS = [("run-Ab12", "small"), ("run-aB12", "xl"), ("run-Ab12 ", "large")]


def _rec(client, org, key, tier="small", user="u1", **fields):
    return post(client, "record", {"orgId": str(org.pk), "userId": user, "actionTier": tier, "idempotencyKey": key,
                                   **fields})


def _balance_state(org) -> tuple:
    b = CreditBalance.objects.filter(organization=org).first()
    if b is None:
        return ()
    return (b.version, b.used_small, b.used_medium, b.used_large, b.used_xl, b.topup_used, b.overage_credits_owed)


def _assert_rows_match_items(org, actions: list[dict], items: list[dict]) -> None:
    """Every recorded/replayed item's actionId names a row of the org with that item's request."""
    rows = {pk: (u, t, k) for pk, u, t, k in BillableAction.objects.filter(organization=org)
            .values_list("pk", "user_id", "tier", "idempotency_key")}
    for action, item in zip(actions, items, strict=True):
        if item["status"] in (200, 201):
            assert rows[item["actionId"]] == (action["userId"], action["actionTier"], action.get("idempotencyKey"))


# --- 5. keys are compared byte for byte: case and trailing spaces count -----------------------------

def test_the_key_column_compares_bytes_case_and_trailing_spaces_included():
    """The collation of the unique key is binary AND NO PAD on this engine. utf8mb4_bin would not do:
    it is PAD SPACE on MariaDB and MySQL 8 alike ('a' = 'a ')."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                       " AND TABLE_NAME = 'billable_actions' AND COLUMN_NAME = 'idempotency_key'")
        (collation,) = cursor.fetchone()
        assert collation == ("utf8mb4_nopad_bin" if connection.mysql_is_mariadb else "utf8mb4_0900_bin")
        cursor.execute("SELECT _utf8mb4'a' = _utf8mb4'a ' COLLATE utf8mb4_bin,"
                       f" _utf8mb4'a' = _utf8mb4'a ' COLLATE {collation},"
                       f" _utf8mb4'a' = _utf8mb4'A' COLLATE {collation},"
                       f" _utf8mb4'\u00e9' = _utf8mb4'e\u0301' COLLATE {collation}")
        assert cursor.fetchone() == (1, 0, 0, 0)


def test_keys_differing_in_case_or_a_trailing_space_are_three_actions(client, now):
    org = OrganizationFactory()
    firsts = []
    for key, tier in CASE_KEYS:
        r = _rec(client, org, key, tier)
        assert r.status_code == 201, (key, r.content)
        firsts.append(r.json())
    assert len({b["actionId"] for b in firsts}) == 3
    rows = BillableAction.objects.filter(organization=org)
    assert sorted(rows.values_list("idempotency_key", "tier")) == sorted(CASE_KEYS)
    b = CreditBalance.objects.get(organization=org)
    assert (b.used_small, b.used_large, b.used_xl) == (1, 1, 1)
    for (key, tier), first in zip(CASE_KEYS, firsts, strict=True):  # each key replays its own first body
        r = _rec(client, org, key, tier)
        assert r.status_code == 200 and r.json() == first
    assert rows.count() == 3 and _balance_state(org)[0] == b.version


def test_a_batch_with_keys_differing_only_in_case_records_each(client, now, insert_path):
    """Reported: a batch holding K1 and k1 failed whole with 503 DATABASE_ERROR on every retry."""
    org = OrganizationFactory()
    earlier = _rec(client, org, "run-Ab12").json()
    actions = [{"userId": "u1", "actionTier": "small", "idempotencyKey": k}
               for k in ("K1", "k1", "k1 ", "K1", "run-aB12", "run-Ab12", "run-Ab12 ")]
    r = post(client, "record-batch", {"orgId": str(org.pk), "actions": actions})
    assert r.status_code == 200, r.content
    j = r.json()
    assert [i["status"] for i in j["results"]] == [201, 201, 201, 200, 201, 200, 201]
    assert (j["recorded"], j["replayed"], j["refused"]) == (5, 2, 0)
    assert j["results"][3]["actionId"] == j["results"][0]["actionId"]
    assert j["results"][5]["actionId"] == earlier["actionId"]
    _assert_rows_match_items(org, actions, j["results"])
    assert BillableAction.objects.filter(organization=org).count() == 6
    assert CreditBalance.objects.get(organization=org).used_small == 6
    again = post(client, "record-batch", {"orgId": str(org.pk), "actions": actions}).json()  # the retry
    assert [i["status"] for i in again["results"]] == [200] * 7
    assert [i["actionId"] for i in again["results"]] == [i["actionId"] for i in j["results"]]


def test_coalesced_records_with_keys_differing_only_in_case_are_each_recorded(now, insert_path):
    org = OrganizationFactory()
    batch = [coalesce._Waiter(action=ActionInput(user_id="u1", tier="small", idempotency_key=k), now=now)
             for k in ("K", "k", "k ")]
    coalesce._run(org.pk.hex, batch)
    assert [w.error for w in batch] == [None] * 3
    assert all(w.result.created for w in batch) and len({w.result.action_id for w in batch}) == 3
    replays = [coalesce._Waiter(action=w.action, now=now) for w in reversed(batch)]
    coalesce._run(org.pk.hex, replays)
    assert [w.result.action_id for w in replays] == [w.result.action_id for w in reversed(batch)]
    assert not any(w.result.created for w in replays)
    assert BillableAction.objects.filter(organization=org).count() == 3


@pytest.mark.django_db(transaction=True)
def test_the_single_record_fast_path_keeps_case_and_spaces_apart_and_refuses_reuse(client, now):
    """Outside a test transaction the view takes action_record's two-round-trip fast path."""
    org = OrganizationFactory()
    firsts = [_rec(client, org, key, tier) for key, tier in CASE_KEYS]
    assert [r.status_code for r in firsts] == [201, 201, 201]
    assert [_rec(client, org, key, tier).json() for key, tier in CASE_KEYS] == [r.json() for r in firsts]
    state = _balance_state(org)
    r = _rec(client, org, "run-aB12", "xl", user="someone-else")
    assert r.status_code == 409 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert BillableAction.objects.filter(organization=org).count() == 3 and _balance_state(org) == state


# --- 6. a key is bound to its request ---------------------------------------------------------------

FIRST = {"userId": "u1", "actionTier": "small", "agentId": "agent-1", "actionKey": "step-1", "idempotencyKey": "k"}
OTHER_REQUEST = [("userId", "u2"), ("actionTier", "xl"), ("agentId", "agent-2"), ("agentId", None),
                 ("actionKey", "step-2"), ("actionKey", None)]


@pytest.mark.parametrize(("field", "value"), OTHER_REQUEST, ids=[f"{f}={v}" for f, v in OTHER_REQUEST])
def test_a_key_reused_for_another_request_is_409_and_records_nothing(client, now, field, value):
    org = OrganizationFactory()
    first = post(client, "record", {"orgId": str(org.pk), **FIRST})
    assert first.status_code == 201
    state = _balance_state(org)
    other = {"orgId": str(org.pk), **FIRST, field: value}
    r = post(client, "record", {k: v for k, v in other.items() if v is not None})
    assert r.status_code == 409, r.content
    j = r.json()
    assert j["success"] is False and j["error"]["code"] == "IDEMPOTENCY_KEY_REUSED" and j["error"]["message"]
    assert j["field"] == "idempotencyKey" and "actionId" not in j
    assert BillableAction.objects.filter(organization=org).count() == 1 and _balance_state(org) == state
    again = post(client, "record", {"orgId": str(org.pk), **FIRST})  # the same request still replays
    assert again.status_code == 200 and again.json() == first.json()


def test_reported_reuse_by_another_user_for_xl_bills_nothing_and_says_so(client, now):
    """Reported: 200, creditsUsed "0.00", nothing billed."""
    org = OrganizationFactory()
    assert _rec(client, org, "k", "small").status_code == 201
    r = _rec(client, org, "k", "xl", user="u2")
    assert r.status_code == 409 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert CreditBalance.objects.get(organization=org).used_xl == 0


def test_description_metadata_and_agent_name_do_not_make_another_request(client, now):
    """A retry may carry a fresh description or metadata (timestamps, attempt numbers): still a replay."""
    org = OrganizationFactory()
    first = post(client, "record", {"orgId": str(org.pk), **FIRST, "description": "a", "metadata": {"try": 1},
                                    "agentName": "A"}).json()
    r = post(client, "record", {"orgId": str(org.pk), **FIRST, "description": "b", "metadata": {"try": 2},
                                "agentName": "B"})
    assert r.status_code == 200 and r.json() == first


def test_reuse_is_409_also_once_the_tier_is_exhausted(client, now, settings):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()  # free: 1 xl
    first = _rec(client, org, "k", "xl").json()
    assert _rec(client, org, "k2", "xl").status_code == 402
    r = _rec(client, org, "k", "xl", user="u2")
    assert r.status_code == 409 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert _rec(client, org, "k", "xl").json() == first


def test_a_key_of_another_org_is_another_key(client, now):
    org, other = OrganizationFactory(), OrganizationFactory()
    assert _rec(client, org, "k", "small").status_code == 201
    assert _rec(client, other, "k", "xl", user="u2").status_code == 201


def test_rows_recorded_before_fingerprints_are_compared_by_their_columns(client, now):
    """Rows written before the fingerprint column existed have none: their own columns decide."""
    org = OrganizationFactory()
    body = _rec(client, org, "new", "small").json()
    legacy = BillableAction.objects.create(
        organization=org, user_id="u1", tier="medium", credits_charged=Decimal("0.00"), paid_from="plan",
        agent_id="agent-1", action_key=None, period_start=now, period_end=now, idempotency_key="legacy",
        response_body={**{k: v for k, v in body.items() if k != "actionId"}}, created_at=now)
    assert legacy.request_fingerprint is None
    same = _rec(client, org, "legacy", "medium", agentId="agent-1")
    assert same.status_code == 200 and same.json()["actionId"] == legacy.pk
    assert _rec(client, org, "legacy", "medium").status_code == 409  # agentId missing: another request
    assert _rec(client, org, "legacy", "xl", agentId="agent-1").status_code == 409


def test_batch_items_reusing_a_key_for_another_request_are_refused_409(client, now, insert_path):
    org = OrganizationFactory()
    earlier = _rec(client, org, "old", "small").json()
    actions = [
        {"userId": "u1", "actionTier": "xl", "idempotencyKey": "old"},       # 409: "old" was a small action
        {"userId": "u1", "actionTier": "small", "idempotencyKey": "old"},    # 200: replay of the earlier action
        {"userId": "u1", "actionTier": "medium", "idempotencyKey": "new"},   # 201
        {"userId": "u2", "actionTier": "medium", "idempotencyKey": "new"},   # 409: same batch, another user
        {"userId": "u1", "actionTier": "medium", "idempotencyKey": "new"},   # 200: replay of item 2
        {"userId": "u1", "actionTier": "large"},                             # 201
    ]
    r = post(client, "record-batch", {"orgId": str(org.pk), "actions": actions})
    assert r.status_code == 200, r.content
    j = r.json()
    assert [i["status"] for i in j["results"]] == [409, 200, 201, 409, 200, 201]
    assert (j["recorded"], j["replayed"], j["refused"]) == (2, 2, 2)
    for i in (0, 3):
        item = j["results"][i]
        assert item["index"] == i and item["success"] is False
        assert item["error"]["code"] == "IDEMPOTENCY_KEY_REUSED" and item["field"] == "idempotencyKey"
    assert "actionId" not in j["results"][0] and "actionId" not in j["results"][3]
    assert j["results"][1]["actionId"] == earlier["actionId"]
    assert j["results"][4]["actionId"] == j["results"][2]["actionId"]
    _assert_rows_match_items(org, actions, j["results"])
    b = CreditBalance.objects.get(organization=org)
    assert (b.used_small, b.used_medium, b.used_large, b.used_xl) == (1, 1, 1, 0)
    assert BillableAction.objects.filter(organization=org).count() == 3


def test_a_key_whose_first_item_was_refused_is_free_for_the_next_item(now, settings, insert_path):
    """Items are charged as if sent one by one: a refused item binds nothing to its key."""
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()  # free: 1 xl, 10 small
    result = services.actions_record_batch(organization_id=org.pk, now=now, actions=[
        ActionInput(user_id="u", tier="xl", idempotency_key="a"),
        ActionInput(user_id="u", tier="xl", idempotency_key="b"),     # 402: no xl left
        ActionInput(user_id="u", tier="xl", idempotency_key="b"),     # 402 again (the same request, tried again)
        ActionInput(user_id="u", tier="small", idempotency_key="b"),  # 201: "b" is still unused
        ActionInput(user_id="u", tier="xl", idempotency_key="b"),     # 409: "b" is now a small action
    ])
    assert [i["status"] for i in result.items] == [201, 402, 402, 201, 409]
    assert [i.get("error", {}).get("code") for i in result.items] == [
        None, "CREDITS_EXHAUSTED", "CREDITS_EXHAUSTED", None, "IDEMPOTENCY_KEY_REUSED"]
    assert (result.recorded, result.replayed, result.refused) == (2, 0, 3)


def test_coalesced_callers_reusing_a_key_for_another_request_get_409(now, insert_path):
    org = OrganizationFactory()
    first = action_record(organization_id=org.pk, user_id="u0", tier="small", now=now, idempotency_key="k0")
    batch = [coalesce._Waiter(action=a, now=now) for a in (
        ActionInput(user_id="u0", tier="small", idempotency_key="k0"),  # replay
        ActionInput(user_id="u9", tier="xl", idempotency_key="k0"),     # 409
        ActionInput(user_id="u1", tier="small", idempotency_key="k1"),  # 201
        ActionInput(user_id="u2", tier="small", idempotency_key="k1"),  # 409
    )]
    coalesce._run(org.pk.hex, batch)
    assert batch[0].result.created is False and batch[0].result.action_id == first.action_id
    assert batch[2].result.created is True
    for w in (batch[1], batch[3]):
        assert w.result is None and w.error.code == "IDEMPOTENCY_KEY_REUSED" and w.error.http_status == 409
    assert BillableAction.objects.filter(organization=org).count() == 2


def test_coalesced_retry_one_by_one_after_a_unique_key_race_also_refuses_reuse(now, monkeypatch):
    org = OrganizationFactory()
    action_record(organization_id=org.pk, user_id="u0", tier="small", now=now, idempotency_key="k0")

    def lose_the_race(**kwargs):
        # Simulated: another process committing k0 between the batch's key read and its INSERT
        # cannot be timed deterministically (the same stand-in as test_coalesce.py).
        raise IntegrityError("duplicate key")

    monkeypatch.setattr(coalesce, "actions_record_batch", lose_the_race)
    batch = [coalesce._Waiter(action=ActionInput(user_id="u9", tier="xl", idempotency_key="k0"), now=now),
             coalesce._Waiter(action=ActionInput(user_id="u1", tier="small", idempotency_key="k1"), now=now)]
    coalesce._run(org.pk.hex, batch)
    assert batch[0].error.code == "IDEMPOTENCY_KEY_REUSED" and batch[1].result.created is True
    assert BillableAction.objects.filter(organization=org).count() == 2


# --- 9. every raw statement has a path MySQL 8 accepts ----------------------------------------------

def test_the_insert_path_is_chosen_from_the_connection_features():
    assert services.bulk_insert_returning() is connection.features.can_return_rows_from_bulk_insert
    if connection.mysql_is_mariadb and connection.mysql_version >= (10, 5):
        assert services.bulk_insert_returning() is True


def test_the_mysql_path_sends_no_returning_and_still_answers_each_item_its_id(client, now, settings, insert_path):
    settings.BILLING_SOFT_LIMIT_BUFFER = 0
    org = OrganizationFactory()
    balance_add_topup_credits(organization_id=org.pk, amount=Decimal("15.00"), now=now)
    statements: list[str] = []

    def capture(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    actions = [{"userId": "u1", "actionTier": "xl", "idempotencyKey": "a"},   # plan
               {"userId": "u2", "actionTier": "xl"},                          # credits
               {"userId": "u3", "actionTier": "xl", "idempotencyKey": "b"},   # 402: a gap among the rows
               {"userId": "u4", "actionTier": "small"},                       # plan
               {"userId": "u1", "actionTier": "xl", "idempotencyKey": "a"}]   # replay
    with connection.execute_wrapper(capture):
        r = post(client, "record-batch", {"orgId": str(org.pk), "actions": actions})
        batch = [coalesce._Waiter(action=ActionInput(user_id=f"c{i}", tier="medium", idempotency_key=f"c{i}"),
                                  now=now) for i in range(3)]
        coalesce._run(org.pk.hex, batch)
    assert r.status_code == 200, r.content
    j = r.json()
    assert [i["status"] for i in j["results"]] == [201, 201, 402, 201, 200]
    _assert_rows_match_items(org, actions, j["results"])
    assert [w.error for w in batch] == [None] * 3
    rows = dict(BillableAction.objects.filter(organization=org).values_list("pk", "user_id"))
    assert [rows[w.result.action_id] for w in batch] == ["c0", "c1", "c2"]
    uses_returning = any("RETURNING" in sql.upper() for sql in statements)
    assert uses_returning is (insert_path == "returning")
