"""The foundation: the suite runs on MariaDB, health reports dependencies, bad config fails clearly."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_suite_runs_on_mariadb_not_sqlite():
    assert connection.vendor == "mysql"
    with connection.cursor() as cur:
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]
    assert "MariaDB" in version or version[0].isdigit()
    assert connection.settings_dict["NAME"].startswith("test_")


@pytest.mark.django_db
def test_healthz_reports_database_and_redis(client, settings):
    resp = client.get("/healthz")
    body = resp.json()
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["database"]["vendor"] == "mysql"
    assert body["checks"]["redis"]["status"] == ("up" if settings.REDIS_URL else "disabled")
    assert resp.status_code == 200


@pytest.mark.django_db
def test_healthz_is_503_when_redis_is_unreachable(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    resp = client.get("/healthz")
    assert resp.status_code == 503
    assert resp.json()["checks"]["redis"]["status"] == "down"


def _run_manage(env_overrides: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SECRET_KEY", "DJANGO_"))}
    env.update(env_overrides)
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("url", ["postgresx://u:p@h/db", "mysql://u:p@/db", "mysql://u:p@h:notaport/db", "nonsense"])
def test_malformed_database_url_fails_with_one_line(url):
    proc = _run_manage({"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "billing_project.settings.local"}, "check")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("configuration error: DATABASE_URL is malformed")


def test_production_without_secret_key_fails_with_one_line():
    proc = _run_manage({"DJANGO_SETTINGS_MODULE": "billing_project.settings.production",
                        "DATABASE_URL": "mysql://u:p@127.0.0.1:3306/db"}, "check")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "configuration error: SECRET_KEY must be set in production"


def test_production_settings_are_secure():
    proc = _run_manage({
        "DJANGO_SETTINGS_MODULE": "billing_project.settings.production",
        "DATABASE_URL": "mysql://u:p@127.0.0.1:3306/db", "SECRET_KEY": "x" * 50,
        "ORCHESTRATOR_SERVICE_TOKEN": "t", "STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_WEBHOOK_SECRET": "whsec_x",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
    }, "shell", "-c",
        "from django.conf import settings as s; print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False True True"
