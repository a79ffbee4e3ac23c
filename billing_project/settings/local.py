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
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
ORCHESTRATOR_SERVICE_TOKEN = env.str("ORCHESTRATOR_SERVICE_TOKEN", default="dev-orchestrator-token")
