"""Fuzz POST /api/webhooks/stripe: random bodies, Stripe-shaped events with wrong types, forged,
replayed and stale signatures, huge bodies, unicode. Property: 200 (stored, or a duplicate
acknowledged) or a 400 whose code is in WEBHOOK_CODES - never a 5xx - and a refused or duplicate
delivery changes nothing. Processing (Celery, on commit) is not triggered inside these tests'
transaction; the handlers are covered by billing/tests/test_webhooks*.py."""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from billing import stripe_gateway
from billing.models.webhooks import WebhookEvent

from .support import WEBHOOK_CODES, assert_stable_error, db_snapshot
from .test_fuzz_usage_api import NASTY_STRINGS, json_values

pytestmark = pytest.mark.django_db

SECRET = "whsec_hardening_fuzz_secret"
FUZZ = hsettings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large])
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


def sign(body: bytes, *, secret: str = SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


def event(**overrides) -> dict:
    base = {"id": f"evt_hardening{next(_ids):08d}{int(time.time() * 1000) % 10**6:06d}", "object": "event",
            "api_version": stripe_gateway.STRIPE_API_VERSION, "created": int(time.time()),
            "type": "customer.created", "livemode": False, "data": {"object": {"id": "cus_x", "object": "customer"}}}
    base.update(overrides)
    return base


def post(client, body: bytes, header: str | None):
    extra = {} if header is None else {"HTTP_STRIPE_SIGNATURE": header}
    return client.post("/api/webhooks/stripe", data=body, content_type="application/json", **extra)


EVENT_FIELDS = ["id", "object", "api_version", "created", "type", "data", "livemode"]
event_bodies = st.one_of(
    # A Stripe-shaped event with some fields replaced by anything (wrong types, unicode, SQL-ish).
    st.dictionaries(st.sampled_from(EVENT_FIELDS), json_values, max_size=3).map(lambda bad: json.dumps(event(**bad))),
    st.dictionaries(st.sampled_from(EVENT_FIELDS), json_values, max_size=3).map(
        lambda bad: json.dumps(event(**bad), ensure_ascii=False)),
    st.sampled_from(NASTY_STRINGS).map(lambda s: json.dumps(event(id=f"evt_{s}", type=s))),
    json_values.map(json.dumps),
).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=300) | st.sampled_from([
    b"", b"{}", b"[]", b"null", b'{"id": NaN}', b"[" * 50000, b'{"created": 1e999}',
    json.dumps(event(created=10**30)).encode(), json.dumps(event(data={"object": {"x": "\ud800"}})).encode(),
    json.dumps(event(data={"object": {"deep": json.loads("[" * 40 + "]" * 40)}})).encode(),
])

signatures = st.one_of(
    st.just("valid"), st.just("valid"), st.just("valid"),
    st.sampled_from(["none", "empty", "wrong_secret", "stale", "future", "forged_v1", "other_body", "no_t",
                     "v0_only", "junk_t", "many_v1"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=80),
)


def header_for(kind: str, body: bytes) -> str | None:
    now = int(time.time())
    if kind == "valid":
        return sign(body)
    if kind == "none":
        return None
    if kind == "empty":
        return ""
    if kind == "wrong_secret":
        return sign(body, secret="whsec_not_ours")
    if kind == "stale":
        return sign(body, timestamp=now - 3600)
    if kind == "future":
        return sign(body, timestamp=now + 3600)
    if kind == "forged_v1":
        return f"t={now},v1={'0' * 64}"
    if kind == "other_body":
        return sign(body + b" ")
    if kind == "no_t":
        return sign(body).split(",", 1)[1]
    if kind == "v0_only":
        return sign(body).replace("v1=", "v0=")
    if kind == "junk_t":
        return sign(body).replace(f"t={now}", "t=" + "9" * 5000, 1)
    if kind == "many_v1":
        return ",".join([f"v1={'f' * 64}"] * 500 + [sign(body)])
    return kind  # random text


@FUZZ
@given(body=event_bodies, kind=signatures)
def test_webhook_never_500_and_refusals_change_nothing(body, kind):
    client = Client()
    before = db_snapshot()
    response = post(client, body, header_for(kind, body))
    if response.status_code == 200:
        assert kind in ("valid", "many_v1"), "accepted a delivery without a valid signature"
        data = response.json()
        assert data["received"] is True
        if data["duplicate"]:
            assert db_snapshot() == before
        else:
            assert WebhookEvent.objects.filter(stripe_event_id=data["eventId"]).count() == 1
        return
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert_stable_error(response, WEBHOOK_CODES)
    assert db_snapshot() == before


def test_replayed_delivery_is_acknowledged_once_and_stale_replay_is_refused():
    client = Client()
    body = json.dumps(event()).encode()
    header = sign(body)
    first = post(client, body, header)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    before = db_snapshot()
    again = post(client, body, header)  # the same bytes and signature, replayed
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert db_snapshot() == before
    stale = post(client, body, sign(body, timestamp=int(time.time()) - 301))
    assert stale.status_code == 400 and stale.json()["error"]["code"] == "WEBHOOK_TIMESTAMP_STALE"
    assert db_snapshot() == before


def test_forged_signature_over_a_valid_event_is_refused():
    client = Client()
    body = json.dumps(event()).encode()
    real = sign(body)
    t, v1 = real.split(",")
    digest = v1.split("=")[1]
    forged = f"{t},v1={digest[:-1]}{'0' if digest[-1] != '0' else '1'}"  # one hex digit off
    before = db_snapshot()
    for header in (forged, f"{t},v1={digest[:32]}", sign(body, secret=SECRET + "x")):
        r = post(client, body, header)
        assert r.status_code == 400 and r.json()["error"]["code"] == "WEBHOOK_SIGNATURE_INVALID", r.content
    assert db_snapshot() == before


def test_huge_body_is_refused_before_anything_else():
    client = Client()
    body = json.dumps(event(data={"object": {"pad": "x" * (600 * 1024)}})).encode()
    before = db_snapshot()
    r = post(client, body, sign(body))
    assert r.status_code == 400 and r.json()["error"]["code"] == "WEBHOOK_PAYLOAD_TOO_LARGE"
    assert db_snapshot() == before


@pytest.mark.parametrize("bad", [
    {"created": "yesterday"}, {"created": 10**30}, {"created": True}, {"id": "evt_" + "x" * 300},
    {"type": "t" * 101}, {"data": {"object": {"k": "\ud800"}}}, {"data": {"object": {"k": float("nan")}}},
])
def test_signed_but_malformed_events_are_400_not_500(bad):
    client = Client()
    body = json.dumps(event(**bad)).encode()
    before = db_snapshot()
    r = post(client, body, sign(body))
    assert r.status_code == 400 and r.json()["error"]["code"] == "WEBHOOK_PAYLOAD_INVALID", r.content
    assert db_snapshot() == before


def test_get_is_405():
    assert Client().get("/api/webhooks/stripe").status_code == 405
