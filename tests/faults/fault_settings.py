"""Settings of the private fault-test stack (tests/faults/): production settings — persistent
connections with health checks, Redis broker and cache — with what a test needs on top:
no TLS redirect, emails as files, a short Stripe read timeout, and a short Redis visibility
timeout so a message whose worker died comes back within seconds (production keeps kombu's 1 h)."""
from billing_project.settings.production import *  # noqa: F403
from billing_project.settings.production import CELERY_BROKER_TRANSPORT_OPTIONS, env

SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = env.str("TEST_EMAIL_FILE_PATH", default="/tmp/faults-mail")
STRIPE_READ_TIMEOUT_SECONDS = env.float("STRIPE_READ_TIMEOUT_SECONDS", default=2.0)
STRIPE_MAX_NETWORK_RETRIES = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
CELERY_BROKER_TRANSPORT_OPTIONS = {**CELERY_BROKER_TRANSPORT_OPTIONS, "visibility_timeout": 30,
                                   "unacked_restore_interval": 1}
CELERY_BEAT_SCHEDULE = {}  # no beat here: tests call the periodic tasks themselves
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
