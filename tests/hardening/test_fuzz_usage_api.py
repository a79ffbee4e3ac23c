"""Fuzz the usage API (record, record-batch, check, GET usage) through the Django test client on
MariaDB. Property: every answer is a success (200/201) or a 4xx whose code is in USAGE_API_CODES -
never a 5xx - and a rejected request changes nothing (actions, balance versions, webhook events).

Bounded and deterministic: fixed max_examples, derandomize=True, no deadline (MariaDB latency)."""
from __future__ import annotations

import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, event, given, settings as hsettings, strategies as st
from hypothesis.control import currently_in_test_context

from organizations.services import api_key_create
from organizations.tests.factories import OrganizationFactory

from .support import ORCHESTRATOR_TOKEN, USAGE_API_CODES, assert_stable_error, db_snapshot

pytestmark = pytest.mark.django_db

FUZZ = hsettings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large])

NASTY_STRINGS = [
    "' OR 1=1 --", "'; DROP TABLE billable_actions; --", "\" OR \"\"=\"", "1; SELECT SLEEP(5)", "%", "_", "\\",
    "small\x00", "\x00", "\u202e\u2066small", "\ud800", "\udfff", "a\ud83dz", "💥" * 70, "ﬀ", "SMALL", " small",
    "small ", "x" * 256, "y" * 1001, "", " ", "null", "NaN", "0", "-1", "1e309", "ＳＭＡＬＬ", "\u0130", "\ufeffsmall",
]
# Any code point, lone surrogates (Cs) and NUL included.
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=40)
texts = st.one_of(st.sampled_from(NASTY_STRINGS), any_text)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
tiers = st.one_of(st.sampled_from(["small", "medium", "large", "xl"]), json_values)
# Mostly strings (they reach the database), sometimes any JSON type.
field_values = st.one_of(texts, texts, texts, json_values)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` 4 times out of 5 (one_of has no weights)."""
    return st.integers(0, 4).flatmap(lambda n: bad if n == 4 else good)

FIELDS = ["orgId", "userId", "actionTier", "agentId", "agentName", "actionKey", "description", "metadata",
          "idempotencyKey"]


def action_bodies(org_ids: st.SearchStrategy) -> st.SearchStrategy:
    """A mostly-valid action with any subset of fields replaced by junk of any type, or dropped."""
    valid = {"userId": st.one_of(st.just("u1"), st.integers(0, 10**6)), "actionTier": tiers,
             "idempotencyKey": st.one_of(st.none(), texts), "metadata": st.one_of(st.none(), json_values)}
    junk = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=3)
    return st.builds(lambda base, org, bad, drop: {k: v for k, v in {**base, "orgId": org, **bad}.items()
                                                   if k not in drop},
                     st.fixed_dictionaries(valid), org_ids, junk, st.sets(st.sampled_from(FIELDS), max_size=2))


def raw_bodies(body_strategy: st.SearchStrategy) -> st.SearchStrategy:
    """JSON (ASCII-escaped, so lone surrogates survive as \\udXXX), or broken bytes, or non-objects."""
    return mostly(st.one_of(
        body_strategy.map(lambda b: json.dumps(b).encode()),
        body_strategy.map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass"))), st.one_of(
        body_strategy.map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe{}", b'{"orgId": NaN}', b'{"a":1,"a":2}',
                         b"{" * 5000 + b"}" * 5000, b"[" * 100000]),
    ))


@pytest.fixture
def world(now):
    org, other = OrganizationFactory(), OrganizationFactory()
    key = api_key_create(organization=org, name="fuzz", now=now).token
    return {"org": org, "other": other, "key": key}


def _org_ids(world) -> st.SearchStrategy:
    return mostly(st.sampled_from([str(world["org"].pk), world["org"].slug]),
                  st.one_of(st.just(str(world["other"].pk)), st.just("00000000-0000-0000-0000-000000000000"),
                            texts, json_values))


def _tokens(world) -> st.SearchStrategy:
    good = [ORCHESTRATOR_TOKEN, world["key"]]
    return mostly(st.sampled_from(good), st.one_of(st.sampled_from([
        "", "Bearer", ORCHESTRATOR_TOKEN[:-1], ORCHESTRATOR_TOKEN + "x", "bk_", "bk__", "bk_x_y", world["key"][:-1],
        world["key"] + "A", "bk_" + "a" * 40 + "_b", "' OR 1=1 --", "bk_' OR 1=1 --_x"]),
        st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)))


def _send(client, method, path, raw, token):
    headers = {} if token is None else {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    if method == "GET":
        return client.get(path, **headers)
    return client.generic(method, path, data=raw, content_type="application/json", **headers)


def _without_versions(snapshot: tuple) -> tuple:
    actions, balances, events = snapshot
    return actions, tuple((pk, topup_used) for pk, _version, topup_used in balances), events


def _check(response, before):
    label = str(response.status_code)
    if response.status_code not in (200, 201):
        code = assert_stable_error(response, USAGE_API_CODES)
        label += " " + code
        after = db_snapshot()
        if code == "CREDITS_EXHAUSTED":  # the tier's first refusal records the block: one write, no money moved
            after, before = _without_versions(after), _without_versions(before)
        assert after == before, "a rejected request changed the database"
    if currently_in_test_context():
        event(label)  # the mix of answers: pytest --hypothesis-show-statistics


@FUZZ
@given(data=st.data())
def test_record_and_check_never_500_and_rejections_change_nothing(world, data):
    client = Client()
    path = data.draw(st.sampled_from(["/api/billing/usage/record", "/api/billing/usage/check"]))
    raw = data.draw(raw_bodies(action_bodies(_org_ids(world))))
    token = data.draw(_tokens(world))
    method = data.draw(mostly(st.just("POST"), st.sampled_from(["PUT", "GET", "DELETE", "PATCH"])))
    before = db_snapshot()
    _check(_send(client, method, path, raw, token), before)


def _batch_bodies(world) -> st.SearchStrategy:
    items = mostly(action_bodies(st.none()), json_values)
    return st.fixed_dictionaries({"orgId": _org_ids(world), "actions": mostly(st.lists(items, max_size=5),
                                                                               json_values)})


@FUZZ
@given(data=st.data())
def test_record_batch_never_500_and_rejections_change_nothing(world, data):
    client = Client()
    raw = data.draw(raw_bodies(_batch_bodies(world)))
    token = data.draw(_tokens(world))
    before = db_snapshot()
    _check(_send(client, "POST", "/api/billing/usage/record-batch", raw, token), before)


@hsettings(FUZZ, max_examples=80)
@given(data=st.data())
def test_usage_summary_query_strings(world, data):
    client = Client()
    value = data.draw(st.one_of(st.sampled_from([str(world["org"].pk), world["org"].slug, str(world["other"].pk)]),
                                texts, st.sampled_from(["%00", "%ff", "%ed%a0%80", "%", "%%", "a%00b", "x" * 300])))
    token = data.draw(_tokens(world))
    from urllib.parse import quote

    encoded = quote(value.encode("utf-8", "surrogatepass"), safe="%")
    before = db_snapshot()
    _check(_send(client, "GET", f"/api/billing/usage?orgId={encoded}", None, token), before)


@pytest.mark.parametrize("path,limit", [("record", 64 * 1024), ("check", 64 * 1024),
                                        ("record-batch", 1024 * 1024)])
def test_bodies_over_the_limit_are_413_and_change_nothing(world, path, limit):
    client = Client()
    body = json.dumps({"orgId": str(world["org"].pk), "userId": "u", "actionTier": "small",
                       "description": "d" * (limit + 1)}).encode()
    before = db_snapshot()
    r = _send(client, "POST", f"/api/billing/usage/{path}", body, ORCHESTRATOR_TOKEN)
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert db_snapshot() == before


def test_unicode_round_trips_in_accepted_fields(world):
    """4-byte UTF-8 and RTL text are data, stored as sent (utf8mb4), not rejected."""
    from usage.models import BillableAction

    client = Client()
    body = {"orgId": str(world["org"].pk), "userId": "用户\u202eA💥", "actionTier": "small",
            "description": "ﬀ 🧪 \u0130", "metadata": {"k": "💥", "\u202e": "rtl"}}
    r = _send(client, "POST", "/api/billing/usage/record", json.dumps(body).encode(), ORCHESTRATOR_TOKEN)
    assert r.status_code == 201, r.content
    row = BillableAction.objects.get(pk=r.json()["actionId"])
    assert (row.user_id, row.description, row.metadata) == (body["userId"], body["description"], body["metadata"])


TEXT_FIELDS = ["orgId", "userId", "agentId", "agentName", "actionKey", "description", "idempotencyKey"]


@pytest.mark.parametrize("field", TEXT_FIELDS + ["actionTier", "metadata"])
def test_every_nasty_string_in_every_field(world, field):
    """Deterministic floor under the fuzzing: each nasty string (SQL-ish, NUL, RTL, lone surrogates,
    over-long, ...) in each field of record, check and record-batch."""
    client = Client()
    for nasty in NASTY_STRINGS:
        value = {"k": nasty, nasty: [nasty]} if field == "metadata" else nasty
        body = {"orgId": str(world["org"].pk), "userId": "u", "actionTier": "small", field: value}
        batch = {"orgId": body.pop("orgId") if field != "orgId" else nasty, "actions": [body]}
        for path, payload in (("record", {**body, "orgId": batch["orgId"]}), ("check", {**body, "orgId": batch["orgId"]}),
                              ("record-batch", batch)):
            before = db_snapshot()
            r = _send(client, "POST", f"/api/billing/usage/{path}", json.dumps(payload).encode(), world["key"])
            _check(r, before)


def test_body_without_content_length_past_djangos_cap_is_413_not_a_bare_400():
    """Chunked uploads (no Content-Length; gunicorn sets wsgi.input_terminated) past Django's
    DATA_UPLOAD_MAX_MEMORY_SIZE raise RequestDataTooBig on request.body: still our 413 code."""
    import io

    from django.test import RequestFactory

    from billing_project.api import parse_json_body
    from billing_project.errors import InvalidRequest

    big = b'{"d": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    request = RequestFactory().generic("POST", "/api/billing/usage/record", content_type="application/json")
    request.META.pop("CONTENT_LENGTH", None)
    request.META["wsgi.input_terminated"] = True
    request._stream = io.BytesIO(big)
    request.__dict__.pop("_body", None)
    with pytest.raises(InvalidRequest) as err:
        parse_json_body(request)
    assert (err.value.code, err.value.http_status) == ("PAYLOAD_TOO_LARGE", 413)


def test_request_json_numbers_are_exact_decimals():
    """Fractions are read as written (never through a float); a number no double can hold is refused."""
    from decimal import Decimal

    from billing_project.api import json_loads_strict

    data = json_loads_strict(b'{"threshold": 10.000000000000000001, "price": 12.10, "n": 3, "e": 1E+2}')
    assert data == {"threshold": Decimal("10.000000000000000001"), "price": Decimal("12.10"), "n": 3,
                    "e": Decimal("1E+2")}
    assert str(data["price"]) == "12.10" and type(data["n"]) is int
    with pytest.raises(ValueError, match="out of range"):
        json_loads_strict(b'{"x": 1e400}')
    assert json_loads_strict(b'{"x": 1.5}', exact_numbers=False) == {"x": 1.5}  # stored verbatim (Stripe events)
