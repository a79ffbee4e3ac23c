"""Web security: CSRF on every form/page POST (URLConf walk), exactly the token/signature endpoints
csrf_exempt, production cookie settings, API keys stored hashed, constant-time token compare,
admin only for staff, no secret in logs."""
from __future__ import annotations

import hmac
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib import admin
from django.db import models
from django.test import Client
from django.urls import reverse

from organizations.models import ApiKey, Role
from organizations.services import api_key_create
from organizations.tests.factories import MembershipFactory, OrganizationFactory, UserFactory

from .support import ORCHESTRATOR_TOKEN, url_routes

pytestmark = pytest.mark.django_db

#: Bearer-token / Stripe-signature endpoints: no cookies involved, so no CSRF - by design, and only these.
CSRF_EXEMPT = {"usage-record", "usage-record-batch", "usage-check", "usage-summary", "stripe-webhook"}


def _concrete(route: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?\w+>", "1", route)


def test_exactly_the_token_and_signature_endpoints_are_csrf_exempt():
    exempt = {name for name, _, cb in url_routes(include_admin=True) if getattr(cb, "csrf_exempt", False)}
    assert exempt == CSRF_EXEMPT


@pytest.mark.parametrize("name,route", [(n, r) for n, r, cb in url_routes() if n not in CSRF_EXEMPT]
                         + [("admin-login", "admin/login/"), ("admin-index", "admin/")])
def test_every_other_post_needs_the_csrf_token(name, route):
    """Logged in as an owner, a POST without the token is refused by the CSRF middleware before any
    view runs - whatever methods the view accepts, so a new form cannot slip by."""
    member = MembershipFactory(role=Role.OWNER)
    member.user.is_staff = member.user.is_superuser = True
    member.user.save()
    client = Client(enforce_csrf_checks=True)
    client.force_login(member.user)
    keys_before = ApiKey.objects.count()
    r = client.post(_concrete(route) + f"?org={member.organization.slug}",
                    data={"org": member.organization.slug, "name": "x", "plan": "pro", "packs": "1"})
    assert r.status_code == 403 and b"CSRF" in r.content, (name, r.status_code)
    assert ApiKey.objects.count() == keys_before


def test_with_the_token_the_form_post_goes_through():
    """Control for the test above: the same client with the CSRF token creates a key."""
    member = MembershipFactory(role=Role.OWNER)
    client = Client(enforce_csrf_checks=True)
    client.force_login(member.user)
    assert client.get(f"/settings/api-keys?org={member.organization.slug}").status_code == 200
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    r = client.post("/settings/api-keys/create", data={"org": member.organization.slug, "name": "ci",
                                                       "csrfmiddlewaretoken": token})
    assert r.status_code == 200 and ApiKey.objects.filter(organization=member.organization, name="ci").exists()


def test_login_form_needs_the_csrf_token():
    user = UserFactory()
    client = Client(enforce_csrf_checks=True)
    r = client.post("/login", data={"username": user.username, "password": "pw-12345-secret"})
    assert r.status_code == 403
    assert "_auth_user_id" not in client.session


def _production_settings(extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE_"))}
    env.update({"DJANGO_SETTINGS_MODULE": "billing_project.settings.production", "SECRET_KEY": "s" * 50,
                "DATABASE_URL": "mysql://u:p@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1/0",
                "ORCHESTRATOR_SERVICE_TOKEN": "t" * 40, "STRIPE_SECRET_KEY": "sk_test_x",
                "STRIPE_WEBHOOK_SECRET": "whsec_x", **(extra_env or {})})
    code = ("import json, django; from django.conf import settings as s; django.setup(); print(json.dumps({k: "
            "getattr(s, k) for k in ['DEBUG', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SESSION_COOKIE_HTTPONLY',"
            " 'SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS', 'SECURE_CONTENT_TYPE_NOSNIFF', 'X_FRAME_OPTIONS',"
            " 'USAGE_API_RATE_LIMIT_PER_MINUTE', 'ORCHESTRATOR_RATE_LIMIT_PER_MINUTE']}))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=django_settings.BASE_DIR)


def test_production_cookies_are_secure():
    result = _production_settings()
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["DEBUG"] is False
    assert values["SESSION_COOKIE_SECURE"] is values["CSRF_COOKIE_SECURE"] is values["SESSION_COOKIE_HTTPONLY"] is True
    assert values["SECURE_SSL_REDIRECT"] is True and values["SECURE_HSTS_SECONDS"] > 0
    assert values["SECURE_CONTENT_TYPE_NOSNIFF"] is True and values["X_FRAME_OPTIONS"] == "DENY"
    assert values["USAGE_API_RATE_LIMIT_PER_MINUTE"] == 6000 and values["ORCHESTRATOR_RATE_LIMIT_PER_MINUTE"] == 0


def test_production_refuses_to_start_without_a_secret_key():
    result = _production_settings({"SECRET_KEY": ""})
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def _all_stored_text() -> str:
    """Every text-ish column of every row of every model (the test's transaction holds little)."""
    chunks = []
    for model in apps.get_models():
        fields = [f.attname for f in model._meta.concrete_fields
                  if isinstance(f, (models.CharField, models.TextField, models.JSONField))]
        if fields:
            chunks.extend(json.dumps(list(row), default=str) for row in model.objects.values_list(*fields))
    return "\n".join(chunks)


def test_api_keys_are_stored_hashed(now):
    member = MembershipFactory(role=Role.OWNER)
    issued = api_key_create(organization=member.organization, name="svc", now=now)
    client = Client()
    client.force_login(member.user)
    page = client.post("/settings/api-keys/create", data={"org": member.organization.slug, "name": "page"})
    shown = re.search(rb"bk_[0-9a-f]+_[A-Za-z0-9_\-]+", page.content).group(0).decode()
    assert page["Cache-Control"] == "no-store"
    stored = _all_stored_text()
    for token in (issued.token, shown):
        secret = token.split("_", 2)[2]
        assert secret not in stored and token not in stored
        assert secret[:12] not in stored  # not even a prefix of the secret
    key = ApiKey.objects.get(pk=issued.api_key.pk)
    assert re.fullmatch(r"[0-9a-f]{64}", key.secret_hash)
    # And the key still authenticates (the hash is what is compared).
    r = Client().get(f"/api/billing/usage?orgId={member.organization.pk}", HTTP_AUTHORIZATION=f"Bearer {issued.token}")
    assert r.status_code == 200


def test_token_compare_is_constant_time_in_the_code_path():
    from organizations import services as org_services
    from usage import views as usage_views

    for fn in (usage_views._authenticate, org_services.api_key_authenticate):
        source = inspect.getsource(fn)
        assert "hmac.compare_digest(" in source, fn.__name__
        assert not re.search(r"(token|secret|expected|secret_hash)\s*[!=]=\s*", source), fn.__name__


def test_token_compare_calls_compare_digest_at_runtime(monkeypatch, now):
    """A spy that calls the real function: the orchestrator token and the API key secret's hash both
    go through hmac.compare_digest."""
    from organizations import services as org_services
    from usage import views as usage_views

    calls = []

    def spy(a, b):
        calls.append((type(a).__name__, len(a), len(b)))
        return hmac.compare_digest(a, b)

    class SpyHmac:
        compare_digest = staticmethod(spy)

    monkeypatch.setattr(usage_views, "hmac", SpyHmac)
    monkeypatch.setattr(org_services, "hmac", SpyHmac)
    org = OrganizationFactory()
    token = api_key_create(organization=org, name="k", now=now).token
    for bearer in (ORCHESTRATOR_TOKEN, token):
        r = Client().get(f"/api/billing/usage?orgId={org.pk}", HTTP_AUTHORIZATION=f"Bearer {bearer}")
        assert r.status_code == 200
    assert len(calls) == 2


@pytest.mark.parametrize("wrong", [
    ORCHESTRATOR_TOKEN[:-1],                       # shorter
    ORCHESTRATOR_TOKEN + "x",                      # longer
    ORCHESTRATOR_TOKEN[:-1] + "X",                 # same length, last char wrong
    "x" * 500,                                     # much longer
    "t",                                           # one char
])
def test_wrong_tokens_of_any_length_are_refused_alike(wrong):
    org = OrganizationFactory()
    r = Client().get(f"/api/billing/usage?orgId={org.pk}", HTTP_AUTHORIZATION=f"Bearer {wrong}")
    assert r.status_code == 401
    assert r.json() == {"success": False, "error": {"code": "INVALID_SERVICE_TOKEN",
                                                    "message": "invalid service token or API key"}}


def test_wrong_api_key_secrets_of_any_length_are_refused_alike(now):
    org = OrganizationFactory()
    token = api_key_create(organization=org, name="k", now=now).token
    bodies = set()
    for wrong in (token[:-1], token + "A", token[:-1] + ("A" if token[-1] != "A" else "B"), token[:20]):
        r = Client().get(f"/api/billing/usage?orgId={org.pk}", HTTP_AUTHORIZATION=f"Bearer {wrong}")
        assert r.status_code == 401
        bodies.add(r.content)
    assert len(bodies) == 1


def _admin_urls() -> list[str]:
    urls = ["/admin/"]
    for model in admin.site._registry:
        opts = model._meta
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_add"))
    return urls


def test_admin_is_only_for_staff():
    urls = _admin_urls()
    assert len(urls) > 5
    member = MembershipFactory(role=Role.OWNER)  # an org owner is not staff
    for client in (Client(), _logged_in(member.user)):
        for url in urls:
            r = client.get(url)
            assert r.status_code == 302 and r["Location"].startswith("/admin/login/"), (url, r.status_code)
    staff = UserFactory(is_staff=True, is_superuser=True)
    assert _logged_in(staff).get("/admin/").status_code == 200


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_no_secret_in_logs(caplog, settings, now):
    """Logs at DEBUG while: recording with an API key (and a wrong one), a webhook with a valid and a
    forged signature, a login (good and bad password), creating a key on the page. No token, secret,
    password or Stripe key appears in any record."""
    import hashlib

    settings.STRIPE_WEBHOOK_SECRET = "whsec_log_sentinel_7f3a9c"
    settings.STRIPE_SECRET_KEY = "sk_test_log_sentinel_51ab"
    caplog.set_level(logging.DEBUG)
    password = "pw-12345-secret"  # UserFactory's
    member = MembershipFactory(role=Role.OWNER)
    org = member.organization
    token = api_key_create(organization=org, name="k", now=now).token
    api = Client()
    body = json.dumps({"userId": "u", "actionTier": "small"})
    assert api.post("/api/billing/usage/record", data=body, content_type="application/json",
                    HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 201
    api.post("/api/billing/usage/record", data=body, content_type="application/json",
             HTTP_AUTHORIZATION=f"Bearer {token[:-2]}zz")
    api.post("/api/billing/usage/record", data=body, content_type="application/json",
             HTTP_AUTHORIZATION=f"Bearer {ORCHESTRATOR_TOKEN}x")
    from billing import stripe_gateway

    event = json.dumps({"id": "evt_logtest0001", "object": "event", "api_version": stripe_gateway.STRIPE_API_VERSION,
                        "created": int(time.time()), "type": "customer.created",
                        "data": {"object": {"id": "cus_1", "object": "customer"}}}).encode()
    t = int(time.time())
    sig = hmac.new(settings.STRIPE_WEBHOOK_SECRET.encode(), f"{t}.".encode() + event, hashlib.sha256).hexdigest()
    for header in (f"t={t},v1={sig}", f"t={t},v1={'0' * 64}"):
        api.post("/api/webhooks/stripe", data=event, content_type="application/json", HTTP_STRIPE_SIGNATURE=header)
    browser = Client()
    browser.post("/login", data={"username": member.user.username, "password": "wrong-" + password})
    assert browser.post("/login", data={"username": member.user.username, "password": password}).status_code == 302
    page = browser.post("/settings/api-keys/create", data={"org": org.slug, "name": "logged?"})
    shown = re.search(rb"bk_[0-9a-f]+_[A-Za-z0-9_\-]+", page.content).group(0).decode()
    assert caplog.records, "nothing was logged: the test would prove nothing"
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (token.split("_", 2)[2], shown.split("_", 2)[2], ORCHESTRATOR_TOKEN, sig, password,
                   settings.STRIPE_WEBHOOK_SECRET, settings.STRIPE_SECRET_KEY, settings.SECRET_KEY):
        assert secret not in text, f"a secret ({secret[:6]}…) is in the logs"
