"""Dev defaults for `make run`: SQLite, eager tasks, console email, the bundled Stripe simulator.

Any of DATABASE_URL / REDIS_URL / STRIPE_* in the environment overrides the embedded default,
so the same settings run the production stack locally.
"""
from .base import *  # noqa: F403
from .base import BASE_DIR
from .envtools import database_from_url, env

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-secret-key-do-not-use-in-production")
DATABASES = {"default": database_from_url(env.str("DATABASE_URL", default=f"sqlite:///{BASE_DIR}/.local/dev.sqlite3"))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several gunicorn threads (and the simulator's webhooks) write at once. A deferred SQLite
    # transaction that reads first and writes later gets SQLITE_BUSY at once when another writer
    # holds the lock (no waiting: it could deadlock), so transactions begin IMMEDIATE and wait up
    # to `timeout` for the write lock; WAL keeps readers from blocking the writer.
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
ORCHESTRATOR_SERVICE_TOKEN = env.str("ORCHESTRATOR_SERVICE_TOKEN", default="dev-orchestrator-token")

# The bundled Stripe simulator (stripe_sim, a test double; scripts/run-extras.sh starts it).
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="sk_test_simulator")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="whsec_dev_simulator")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="http://127.0.0.1:12111")
