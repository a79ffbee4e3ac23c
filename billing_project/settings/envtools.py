"""Reading configuration from the environment, with one-line errors for bad values."""
from __future__ import annotations

from urllib.parse import urlparse

import environ
from django.core.exceptions import ImproperlyConfigured

env = environ.Env()

_DB_SCHEMES = {"mysql", "mariadb", "sqlite"}


def database_from_url(url: str) -> dict:
    """Parse DATABASE_URL, refusing anything but mysql:// (production) or sqlite:// (dev)."""
    parsed = urlparse(url)
    if parsed.scheme not in _DB_SCHEMES:
        raise ImproperlyConfigured(
            f"DATABASE_URL is malformed: scheme {parsed.scheme or '(none)'!r} is not one of "
            "mysql://user:password@host:port/name or sqlite:////absolute/path.db"
        )
    if parsed.scheme in ("mysql", "mariadb"):
        if not parsed.hostname or not parsed.path.strip("/"):
            raise ImproperlyConfigured(
                "DATABASE_URL is malformed: expected mysql://user:password@host:port/name"
            )
        try:
            parsed.port  # noqa: B018 - raises ValueError on a non-numeric port
        except ValueError:
            raise ImproperlyConfigured("DATABASE_URL is malformed: the port is not a number") from None
        url = url.replace("mariadb://", "mysql://", 1)
    config = environ.Env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.mysql":
        config["OPTIONS"] = {
            "charset": "utf8mb4",
            "init_command": "SET sql_mode='STRICT_TRANS_TABLES', innodb_lock_wait_timeout=10",
            "isolation_level": "read committed",
        }
    return config


def required(name: str) -> str:
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(f"{name} must be set in production")
    return value
