"""One private production-like stack for the fault tests: MariaDB + Redis + Stripe simulator +
gunicorn + a Celery worker (own queue), all started from tests/faults/instances.py and pointed
at each other through the environment. Tests may kill any part; `ensure_up()` brings back what
is down. Django code runs in subprocesses (stackctl.py, manage.py) with the stack's env."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from .instances import PY, ROOT, AppProcess, PrivateMariaDB, PrivateRedis, poll

DB_NAME = "faults"
TOKEN = "faults-orchestrator-token"
WEBHOOK_SECRET = "whsec_faults_simulator"


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = PrivateMariaDB(root / "mariadb")
        self.redis = PrivateRedis(root / "redis")
        self.queue = f"faults-{os.getpid()}"
        self.mail_dir = root / "mail"
        self.logs = ROOT / "test-artifacts" / "faults"
        self.sim: AppProcess | None = None
        self.app: AppProcess | None = None
        self.worker: AppProcess | None = None
        self.env: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Stack:
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        self.db.start()
        self.db.create_database(DB_NAME)
        self.redis.start()
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "CELERY_", "TEST_"))}
        self.sim = AppProcess.stripe_sim(base_env, self.logs / "sim.log").start(ready_path="/_sim/health")
        self.env = {
            **base_env,
            "DJANGO_SETTINGS_MODULE": "tests.faults.fault_settings",
            "DATABASE_URL": self.db.url(DB_NAME),
            "REDIS_URL": self.redis.url(0),
            "CELERY_QUEUE": self.queue,
            "SECRET_KEY": "faults-secret-key-not-for-production",
            "ORCHESTRATOR_SERVICE_TOKEN": TOKEN,
            "STRIPE_SECRET_KEY": "sk_test_faults",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": self.sim.url,
            "TEST_EMAIL_FILE_PATH": str(self.mail_dir),
            "CONN_MAX_AGE": "60",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env, check=True,
                       timeout=300)
        prices = self.manage("stripe_setup").stdout
        for line in prices.splitlines():  # STRIPE_PRICE_*=price_… lines
            if line.startswith("STRIPE_PRICE_") and "=" in line:
                k, v = line.strip().split("=", 1)
                self.env[k] = v.strip()
        self.app = AppProcess.gunicorn(self.env, self.logs / "gunicorn.log")
        self.worker = AppProcess.celery_worker(self.env, self.logs / "worker.log", queue=self.queue)
        self.ensure_up()
        return self

    def ensure_up(self) -> None:
        self.db.start()
        self.redis.start()
        self.sim_control("DELETE", "/_sim/faults")
        if not self.app.alive():
            self.app.start(ready_path="/healthz")
        if not self.worker.alive():
            self.start_worker()
        poll(self.healthy, timeout=60, message="the private stack's /healthz to answer 200")

    def start_worker(self) -> None:
        # The worker waits longer for Stripe than the web app, so a test can catch it inside the call.
        env = {**self.env, "STRIPE_READ_TIMEOUT_SECONDS": "15"}
        self.worker = AppProcess.celery_worker(env, self.worker.log_path, queue=self.queue)
        self.worker.start(ready=self.worker_ready, timeout=60)

    def worker_ready(self) -> bool:
        return "ready." in self.worker.log()[-20000:] and bool(self.worker.children())

    def healthy(self) -> bool:
        try:
            return requests.get(self.app.url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        for proc in (self.worker, self.app, self.sim):
            if proc is not None:
                proc.stop()
        self.redis.stop()
        self.db.stop()

    # -- Django in a subprocess ----------------------------------------------------------------
    def manage(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def ctl(self, *args: str) -> Any:
        out = subprocess.run([PY, str(Path(__file__).parent / "stackctl.py"), *args], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"stackctl {args} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def reconcile(self, *extra: str) -> dict:
        out = self.manage("reconcile", "--json", *extra, check=False)
        assert out.returncode in (0, 1), out.stderr[-3000:]
        return json.loads(out.stdout)

    def assert_zero_drift(self) -> dict:
        report = self.reconcile()
        assert report["driftedOrgs"] == 0 and report["drifts"] == [], report
        return report

    # -- direct reads of the private database ----------------------------------------------------
    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        import MySQLdb

        u = urlparse(self.db.url(DB_NAME))
        conn = MySQLdb.connect(host=u.hostname, port=u.port, user=u.username, password=u.password,
                               database=DB_NAME, connect_timeout=5)
        try:
            cur = conn.cursor()
            cur.execute(query, params)
            return list(cur.fetchall())
        finally:
            conn.close()

    def org_hex(self, org_id: str) -> str:
        return uuid.UUID(org_id).hex

    # -- the simulator ---------------------------------------------------------------------------
    def sim_control(self, method: str, path: str, body: dict | None = None) -> Any:
        r = requests.request(method, self.sim.url + path, json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def sim_get(self, path: str, **params: Any) -> Any:
        r = requests.get(self.sim.url + path, params=params, timeout=10,
                         headers={"Authorization": f"Bearer {self.env['STRIPE_SECRET_KEY']}"})
        r.raise_for_status()
        return r.json()

    # -- HTTP clients ----------------------------------------------------------------------------
    def api(self, path: str, body: dict, *, timeout: float = 30) -> requests.Response:
        return requests.post(self.app.url + path, json=body, timeout=timeout,
                             headers={"Authorization": f"Bearer {TOKEN}"})

    def login(self, email: str, password: str) -> requests.Session:
        s = requests.Session()
        s.get(self.app.url + "/login", timeout=10).raise_for_status()
        r = s.post(self.app.url + "/login", timeout=10, allow_redirects=False,
                   data={"username": email, "password": password, "csrfmiddlewaretoken": s.cookies["csrftoken"]})
        assert r.status_code == 302, r.text[:500]
        s.headers["X-CSRFToken"] = s.cookies["csrftoken"]
        return s

    def wait(self, predicate, *, timeout: float, message: str) -> Any:
        return poll(predicate, timeout=timeout, message=message, interval=0.1)


def monotonic() -> float:
    return time.monotonic()
