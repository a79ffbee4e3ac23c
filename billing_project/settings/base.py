"""Settings shared by every environment. Environment variables are listed in README.md.

No import-time side effects here (no `stripe.api_key = …`): the gateway reads these lazily.
"""
from __future__ import annotations

from pathlib import Path

from .envtools import env

BASE_DIR = Path(__file__).resolve().parent.parent.parent

SECRET_KEY = env.str("SECRET_KEY", default="")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "organizations",
    "billing",
    "usage",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "billing_project.urls"
WSGI_APPLICATION = "billing_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# DATABASES is set per environment (local has a SQLite default, production requires DATABASE_URL).
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/settings/billing"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Redis / Celery -----------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-task leaves the message for another: tasks are idempotent
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="billing")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 2, "socket_timeout": 5}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Task modules outside the apps' tasks.py (autodiscovery only finds <app>.tasks).
CELERY_IMPORTS = ("usage.tasks_health",)
# One visible schedule for every periodic task.
CELERY_BEAT_SCHEDULE: dict = {
    # Dunning: grace reminders, cancel + downgrade after the grace period, stuck trials (billing.services.dunning).
    "billing-dunning-enforce": {"task": "billing.tasks_webhooks.dunning_enforce_task", "schedule": 3600.0},
    # Re-queue webhook events left pending (their on-commit send was lost).
    "billing-webhooks-requeue-stale": {"task": "billing.tasks_webhooks.webhook_requeue_stale", "schedule": 600.0},
    # Daily health summary to BILLING_ADMIN_EMAIL: failed webhooks (7d), stuck purchases, balance drift.
    "billing-daily-health": {"task": "usage.tasks_health.send_daily_health_summary", "schedule": 86400.0},
    # Top-ups: re-queue auto top-ups stuck before the Stripe call (broker was down), flag ones stuck after it.
    "billing-topups-sweep": {"task": "billing.tasks_topups.topup_sweep", "schedule": 60.0},
    # Browser idempotency keys (Idempotency-Key / form tokens): honoured 30 days, then purged.
    "billing-request-idempotency-purge": {"task": "billing.tasks.request_idempotency_purge_task",
                                          "schedule": 86400.0},
}

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Email --------------------------------------------------------------------
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="billing@agents.example")
BILLING_ADMIN_EMAIL = env.str("BILLING_ADMIN_EMAIL", default="")

# --- Billing ------------------------------------------------------------------
# Percent of included[T], rounded up, that may run past exhaustion as overage. 0 = hard limit.
BILLING_SOFT_LIMIT_BUFFER = env.int("BILLING_SOFT_LIMIT_BUFFER", default=10)
BILLING_WARNING_COOLDOWN_HOURS = env.int("BILLING_WARNING_COOLDOWN_HOURS", default=24)
BILLING_GRACE_PERIOD_DAYS = env.int("BILLING_GRACE_PERIOD_DAYS", default=7)
ORCHESTRATOR_SERVICE_TOKEN = env.str("ORCHESTRATOR_SERVICE_TOKEN", default="")
# Usage API requests per minute per token (usage.ratelimit; fixed window in Redis). 0 = off.
USAGE_API_RATE_LIMIT_PER_MINUTE = env.int("USAGE_API_RATE_LIMIT_PER_MINUTE", default=6000)
# The orchestrator's service token carries every org's traffic: off by default (see usage/ratelimit.py).
ORCHESTRATOR_RATE_LIMIT_PER_MINUTE = env.int("ORCHESTRATOR_RATE_LIMIT_PER_MINUTE", default=0)
# Public URL of this app, used in emails and Stripe redirect URLs.
APP_BASE_URL = env.str("APP_BASE_URL", default="http://127.0.0.1:8000")

# --- Stripe -------------------------------------------------------------------
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")  # empty = api.stripe.com
# SDK network retries (connection errors / 409 / 429 / 5xx, same idempotency key); the gateway caps it at 0..5.
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
# Seconds the gateway waits for Stripe's answer (connect timeout is separate and short).
STRIPE_READ_TIMEOUT_SECONDS = env.float("STRIPE_READ_TIMEOUT_SECONDS", default=30.0)
STRIPE_PRICE_STARTER = env.str("STRIPE_PRICE_STARTER", default="")
STRIPE_PRICE_PRO = env.str("STRIPE_PRICE_PRO", default="")
STRIPE_PRICE_MAX = env.str("STRIPE_PRICE_MAX", default="")
STRIPE_PRICE_CREDITS_500 = env.str("STRIPE_PRICE_CREDITS_500", default="")
# Billing portal configuration (bpc_…) printed by `manage.py stripe_setup`: no plan switching, cancel at
# period end. Empty: looked up at Stripe by its metadata; none there -> the portal answers 503.
STRIPE_PORTAL_CONFIGURATION = env.str("STRIPE_PORTAL_CONFIGURATION", default="")

# --- Logging ------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The SDK logs every request at INFO; billing.stripe (the gateway) logs one line per call.
        "stripe": {"level": "WARNING"},
    },
}
