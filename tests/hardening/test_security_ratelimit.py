"""Rate limit of the usage API per token (usage.ratelimit), against the real Redis of `make test`."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.helpers import free_port
import redis
from django.conf import settings as django_settings
from django.test import Client

from organizations.services import api_key_create
from organizations.tests.factories import OrganizationFactory
from usage import ratelimit
from usage.models import BillableAction

pytestmark = pytest.mark.django_db


@pytest.fixture
def real_redis():
    assert django_settings.REDIS_URL, "make test sets REDIS_URL: the limiter is tested against real Redis"
    ratelimit._redis_down_until = 0.0
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    yield client
    ratelimit._redis_down_until = 0.0


def record(client, token, org):
    return client.post("/api/billing/usage/record", data=json.dumps({"orgId": str(org.pk), "userId": "u",
                                                                    "actionTier": "small"}),
                       content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")


def test_fixed_window_counts_per_token_and_resets_next_minute(real_redis, settings):
    settings.USAGE_API_RATE_LIMIT_PER_MINUTE = 3
    token = f"bk_rl_{uuid.uuid4().hex}"
    t0 = 60 * 31_666_667 + 20.0  # 20 s into a window
    for _ in range(3):
        ratelimit.rate_limit_check(token=token, orchestrator=False, now=t0)
    with pytest.raises(ratelimit.RateLimited) as exc:
        ratelimit.rate_limit_check(token=token, orchestrator=False, now=t0 + 1)
    assert exc.value.http_status == 429 and exc.value.code == "RATE_LIMITED"
    assert exc.value.headers == {"Retry-After": "39"}  # 60 - 21 s
    ratelimit.rate_limit_check(token=f"bk_other_{uuid.uuid4().hex}", orchestrator=False, now=t0)  # own budget
    ratelimit.rate_limit_check(token=token, orchestrator=False, now=t0 + 40)  # the next window
    # Keyed by a hash: the raw token is in no Redis key, and the counter expires.
    key = ratelimit.token_key(token, window=int(t0 // 60))
    assert int(real_redis.get(key)) == 4 and 0 < real_redis.ttl(key) <= 120
    assert not any(token.encode() in k for k in real_redis.scan_iter(match="rl:usage:*", count=1000))


def test_http_429_with_retry_after_and_nothing_recorded(real_redis, settings, now):
    settings.USAGE_API_RATE_LIMIT_PER_MINUTE = 3
    org = OrganizationFactory()
    token = api_key_create(organization=org, name="rl", now=now).token
    client = Client()
    # 7 requests span at most two windows (<= 6 allowed), so at least one is refused wherever the
    # minute boundary falls; no timing assumption.
    responses = [record(client, token, org) for _ in range(7)]
    codes = [r.status_code for r in responses]
    assert set(codes) <= {201, 429} and 429 in codes, codes
    refused = [r for r in responses if r.status_code == 429]
    for r in refused:
        assert r.json()["error"]["code"] == "RATE_LIMITED"
        assert 1 <= int(r["Retry-After"]) <= 60 and r.json()["retryAfter"] == int(r["Retry-After"])
    assert BillableAction.objects.filter(organization=org).count() == codes.count(201)


def test_unknown_tokens_are_not_counted(real_redis, settings):
    settings.USAGE_API_RATE_LIMIT_PER_MINUTE = 1
    org = OrganizationFactory()
    bad = f"bk_{uuid.uuid4().hex[:12]}_nope"
    client = Client()
    for _ in range(3):
        assert record(client, bad, org).status_code == 401
    import time

    assert real_redis.get(ratelimit.token_key(bad, window=int(time.time() // 60))) is None


def test_orchestrator_has_its_own_limit_off_by_default(real_redis, settings):
    settings.USAGE_API_RATE_LIMIT_PER_MINUTE = 1  # API keys: 1/min - must not apply to the orchestrator
    settings.ORCHESTRATOR_SERVICE_TOKEN = f"orch-{uuid.uuid4().hex}"  # a key of its own in the shared Redis
    assert django_settings.ORCHESTRATOR_RATE_LIMIT_PER_MINUTE == 0
    org = OrganizationFactory()
    client = Client()
    assert {record(client, settings.ORCHESTRATOR_SERVICE_TOKEN, org).status_code for _ in range(5)} == {201}
    settings.ORCHESTRATOR_RATE_LIMIT_PER_MINUTE = 2
    codes = [record(client, settings.ORCHESTRATOR_SERVICE_TOKEN, org).status_code for _ in range(5)]
    assert 429 in codes and set(codes) <= {201, 429}


def test_redis_down_fails_open(settings, now, caplog):
    """Billing keeps recording when Redis is unreachable (a closed port); the limiter logs and steps aside."""
    port = free_port()  # nothing listens there
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    settings.USAGE_API_RATE_LIMIT_PER_MINUTE = 1
    ratelimit._redis_down_until = 0.0
    org = OrganizationFactory()
    token = api_key_create(organization=org, name="rl", now=now).token
    try:
        assert [record(Client(), token, org).status_code for _ in range(3)] == [201, 201, 201]
    finally:
        ratelimit._redis_down_until = 0.0
    assert "rate limiter off" in caplog.text
