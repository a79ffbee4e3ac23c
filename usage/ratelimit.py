"""Per-token rate limit of the usage API: a fixed one-minute window counted in Redis.

Hot path cost: one round trip (pipeline: INCR + EXPIRE) per request, after authentication (so
unknown tokens cost nothing here and cannot fill Redis with keys). The key is
`rl:usage:<sha256(token)[:32]>:<minute>` - never the raw token. Limits per minute:
`USAGE_API_RATE_LIMIT_PER_MINUTE` for API keys (default 6000 = 100/s per key), and
`ORCHESTRATOR_RATE_LIMIT_PER_MINUTE` for the orchestrator's service token (default 0 = off: it
is one trusted caller carrying every org's traffic, so a cap there would turn a platform-wide
burst into a billing outage; a leaked service token is a full compromise that a rate limit would
not contain). 0 = off.

Without REDIS_URL (dev) the Django cache (locmem, per process) counts instead. If Redis is
unreachable the limiter fails open for REDIS_RETRY_AFTER_FAILURE seconds and logs once: billing
must keep recording actions while Redis is down (the faults tests stop it).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time

import redis
from django.conf import settings
from django.core.cache import cache

from billing_project.errors import AppError

logger = logging.getLogger("usage.ratelimit")

WINDOW_SECONDS = 60
#: After a Redis error, skip the limiter this long (fail open) instead of paying a timeout per request.
REDIS_RETRY_AFTER_FAILURE = 10.0
_SOCKET_TIMEOUT = 0.25

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
_redis_down_until = 0.0


class RateLimited(AppError):
    code = "RATE_LIMITED"
    http_status = 429

    def __init__(self, *, limit: int, retry_after: int) -> None:
        super().__init__(f"more than {limit} requests per minute with this token; retry in {retry_after} s",
                         extra={"retryAfter": retry_after})
        self.headers = {"Retry-After": str(retry_after)}


def _client(url: str) -> redis.Redis:
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url) or redis.Redis.from_url(
                url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT)
            _clients[url] = client
    return client


def token_key(token: str, *, window: int) -> str:
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"rl:usage:{digest}:{window}"


def _count(key: str) -> int | None:
    """This window's count after adding the current request; None when the counter is unavailable."""
    global _redis_down_until
    url = settings.REDIS_URL
    if not url:
        cache.add(key, 0, timeout=WINDOW_SECONDS * 2)
        try:
            return cache.incr(key)
        except ValueError:  # expired between add and incr
            return None
    if time.monotonic() < _redis_down_until:
        return None
    try:
        pipe = _client(url).pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS * 2)
        count, _ = pipe.execute()
        return int(count)
    except redis.RedisError as exc:
        _redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_FAILURE
        logger.warning("rate limiter off for %.0f s: Redis unavailable (%s)", REDIS_RETRY_AFTER_FAILURE,
                       exc.__class__.__name__)
        return None


def rate_limit_check(*, token: str, orchestrator: bool, now: float) -> None:
    """Count one request of `token` (already authenticated) at unix time `now`; RateLimited when it
    is over its per-minute limit."""
    limit = settings.ORCHESTRATOR_RATE_LIMIT_PER_MINUTE if orchestrator else settings.USAGE_API_RATE_LIMIT_PER_MINUTE
    if limit <= 0:
        return
    window = int(now // WINDOW_SECONDS)
    count = _count(token_key(token, window=window))
    if count is not None and count > limit:
        retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))
        raise RateLimited(limit=limit, retry_after=retry_after)
