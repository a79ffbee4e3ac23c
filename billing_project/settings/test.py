"""Test settings: MariaDB only (SQLite is not a substitute), fast hashing, in-memory email."""
from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .envtools import database_from_url, env

SECRET_KEY = "test-secret-key"
DEBUG = False
_url = env.str("DATABASE_URL", default="")
if not _url.startswith(("mysql://", "mariadb://")):
    raise ImproperlyConfigured("tests run on MariaDB/MySQL only: set DATABASE_URL=mysql://… (make test does)")
DATABASES = {"default": database_from_url(_url)}
# Each concurrent test run (e.g. two developers on one machine) may name its own test database.
DATABASES["default"]["TEST"] = {
    "NAME": env.str("TEST_DB_NAME", default="test_billing"),
    "CHARSET": "utf8mb4",
    "COLLATION": "utf8mb4_unicode_ci",
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# A real Celery worker started by the tests writes its emails to files the test can read.
if env.str("TEST_EMAIL_FILE_PATH", default=""):
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = env.str("TEST_EMAIL_FILE_PATH")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
ORCHESTRATOR_SERVICE_TOKEN = "test-orchestrator-token"
# Tasks run inline unless a test starts a real worker (see tests/conftest.py `celery_worker`).
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=True)
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
# Static files come from the finders in tests (the live server serves them); no collectstatic.
MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("whitenoise.")]  # noqa: F405
