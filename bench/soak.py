"""`make bench soak`: mixed traffic against a production-like stack for a bounded time, then drift.

Stack: gunicorn (settings.production, gthread) + the shared MariaDB/Redis of scripts/services.sh
on its own database (BENCH_SOAK_DB, default bench_soak, recreated) and Redis DB 13 + one Celery
worker on its own queue. Traffic, all at once for BENCH_SOAK_SECONDS (default 60):
  record     BENCH_SOAK_RECORD_CLIENTS (6)  POST /api/billing/usage/record, unique idempotency keys, 20 orgs
  check      BENCH_SOAK_CHECK_CLIENTS (2)   POST /api/billing/usage/check
  dashboard  BENCH_SOAK_PAGE_CLIENTS (2)    GET /settings/billing and /usage as a logged-in owner
  webhook    BENCH_SOAK_WEBHOOK_CLIENTS (1) POST /api/webhooks/stripe, signed events the worker processes
Prints per kind: requests, throughput, p50/p99 latency, answers by status; then waits for the worker
to process every webhook and runs `manage.py reconcile --json`. Exit 1 on a 5xx or any drift.

    .venv/bin/python bench/soak.py             # what scripts/bench.sh soak runs
    bench/soak.py prepare                      # (internal) inside Django: orgs, sessions -> JSON
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "60"))
CLIENTS = {
    "record": int(os.environ.get("BENCH_SOAK_RECORD_CLIENTS", "6")),
    "check": int(os.environ.get("BENCH_SOAK_CHECK_CLIENTS", "2")),
    "dashboard": int(os.environ.get("BENCH_SOAK_PAGE_CLIENTS", "2")),
    "webhook": int(os.environ.get("BENCH_SOAK_WEBHOOK_CLIENTS", "1")),
}
N_ORGS = 20
TIERS = ("small", "small", "small", "medium", "medium", "large", "xl")
WEBHOOK_SECRET = "whsec_bench_soak"
TOKEN = f"soak-orchestrator-token-{os.getpid()}"


# ------------------------------------------------------------------------------------------------
# inside Django (subprocess): create the orgs and logged-in owner sessions

def prepare() -> None:
    import django

    django.setup()
    print(json.dumps(prepare_orgs()))


def prepare_orgs(n_orgs: int = N_ORGS) -> dict:
    """(Django set up) `n_orgs` pro orgs with a grant and a logged-in owner session: {"orgs": [...]}."""
    import datetime as dt
    from decimal import Decimal

    from dateutil.relativedelta import relativedelta
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.utils import timezone

    from billing.services.balance import balance_set_plan
    from billing.services.grants import credit_grant_create
    from organizations.models import Organization, PlanTier, Role
    from organizations.services import membership_add, organization_create, user_create

    now = timezone.now() - dt.timedelta(minutes=1)
    staff = user_create(email="staff@soak.bench", password=uuid.uuid4().hex)
    orgs = []
    for i in range(n_orgs):
        slug = f"soak-{i:02d}"
        org = organization_create(name=slug, slug=slug, now=now)
        Organization.objects.filter(pk=org.pk).update(subscription_tier=PlanTier.PRO)
        balance_set_plan(organization_id=org.pk, plan_tier=PlanTier.PRO, period_start=now,
                         period_end=now + relativedelta(months=1), reset_usage=True, now=now)
        # a grant (purchase row + credits) so the facts explain the balance: reconcile must see zero drift
        credit_grant_create(organization_id=org.pk, credits=Decimal("100000.00"), reason="soak load",
                            granted_by=staff, now=now)
        user = user_create(email=f"owner@{slug}.bench", password=uuid.uuid4().hex)
        membership_add(organization=org, user=user, role=Role.OWNER, now=now)
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        orgs.append({"id": str(org.pk), "slug": slug, "session": session.session_key})
    return {"orgs": orgs}


def webhook_state() -> None:
    import django

    django.setup()
    from django.db.models import Count

    from billing.models import WebhookEvent

    print(json.dumps({r["status"]: r["n"] for r in WebhookEvent.objects.values("status").annotate(n=Count("id"))}))


# ------------------------------------------------------------------------------------------------
# the load generator

class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, Counter] = defaultdict(Counter)
        self.samples: dict[str, list[str]] = defaultdict(list)

    def add(self, kind: str, seconds: float, status: int, body: bytes) -> None:
        with self.lock:
            self.latency[kind].append(seconds)
            self.status[kind][status] += 1
            if status >= 500 and len(self.samples[kind]) < 3:
                self.samples[kind].append(body[:300].decode(errors="replace"))


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Client:
    """One keep-alive HTTP/1.1 connection (reconnects after an error or a `Connection: close`)."""

    def __init__(self, base: str) -> None:
        u = urlparse(base)
        self.host, self.port = u.hostname, u.port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return resp.status, data
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    return 599, b"connection error"
        return 599, b""


def run_load(base: str, orgs: list[dict], stats: Stats, stop_at: float, clients: dict[str, int] | None = None) -> None:
    """Every kind of client of `clients` (default CLIENTS) at once until `stop_at` (time.monotonic())."""
    clients = CLIENTS if clients is None else clients
    api_headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    host = urlparse(base).netloc
    seq = itertools.count()

    def record(client: Client, rng: random.Random) -> tuple[str, str, bytes | None, dict]:
        org = rng.choice(orgs)
        body = {"orgId": org["id"], "userId": f"user-{rng.randrange(50)}", "actionTier": rng.choice(TIERS),
                "agentId": f"agent-{rng.randrange(10)}", "idempotencyKey": f"soak-{os.getpid()}-{next(seq)}"}
        return "POST", "/api/billing/usage/record", json.dumps(body).encode(), api_headers

    def check(client: Client, rng: random.Random):
        body = {"orgId": rng.choice(orgs)["id"], "actionTier": rng.choice(TIERS)}
        return "POST", "/api/billing/usage/check", json.dumps(body).encode(), api_headers

    def dashboard(client: Client, rng: random.Random):
        org = rng.choice(orgs)
        path = rng.choice(["/settings/billing", "/settings/billing", "/usage"]) + f"?org={org['slug']}"
        # production settings: secure cookies, TLS terminated by a proxy that says so
        return "GET", path, None, {"Cookie": f"sessionid={org['session']}", "X-Forwarded-Proto": "https",
                                   "Host": host}

    from billing.stripe_gateway import STRIPE_API_VERSION

    def webhook(client: Client, rng: random.Random):
        n = next(seq)
        kind = rng.choice(["payment_intent.succeeded", "customer.created"])
        obj = ({"id": f"pi_soak_{n}", "object": "payment_intent", "status": "succeeded", "amount": 2000,
                "currency": "usd", "metadata": {}} if kind.startswith("payment_intent")
               else {"id": f"cus_soak_{n}", "object": "customer", "email": None})
        event = {"id": f"evt_soak_{os.getpid()}_{n}", "object": "event", "type": kind,
                 "api_version": STRIPE_API_VERSION, "created": int(time.time()), "livemode": False,
                 "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "data": {"object": obj}}
        body = json.dumps(event).encode()
        t = int(time.time())
        sig = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return "POST", "/api/webhooks/stripe", body, {"Stripe-Signature": f"t={t},v1={sig}",
                                                      "Content-Type": "application/json"}

    makers = {"record": record, "check": check, "dashboard": dashboard, "webhook": webhook}

    def loop(kind: str, n: int) -> None:
        client, rng = Client(base), random.Random(f"{kind}-{n}")
        while time.monotonic() < stop_at:
            method, path, body, headers = makers[kind](client, rng)
            started = time.monotonic()
            status, data = client.request(method, path, body, headers)
            stats.add(kind, time.monotonic() - started, status, data)

    threads = [threading.Thread(target=loop, args=(kind, i), daemon=True)
               for kind, count in clients.items() for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, stop_at - time.monotonic()) + 60)


def print_figures(stats: Stats, elapsed: float) -> int:
    """Prints requests, throughput, p50/p99 and answers per kind; returns the number of 5xx answers."""
    print(f"{'kind':<10} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  answers")
    total_5xx = 0
    for kind in CLIENTS:
        lat = stats.latency[kind]
        answers = dict(sorted(stats.status[kind].items()))
        total_5xx += sum(n for s, n in answers.items() if s >= 500)
        print(f"{kind:<10} {len(lat):>8} {len(lat) / elapsed:>8.1f} {_pct(lat, 50) * 1000:>8.1f} "
              f"{_pct(lat, 99) * 1000:>8.1f}  {answers}")
        for sample in stats.samples[kind]:
            print(f"   5xx sample: {sample}")
    all_lat = [x for v in stats.latency.values() for x in v]
    print(f"{'all':<10} {len(all_lat):>8} {len(all_lat) / elapsed:>8.1f} {_pct(all_lat, 50) * 1000:>8.1f} "
          f"{_pct(all_lat, 99) * 1000:>8.1f}")
    return total_5xx


# ------------------------------------------------------------------------------------------------
# orchestration

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out waiting for {what}")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        conn = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False


def main() -> int:
    services = subprocess.run(["scripts/services.sh", "start"], cwd=ROOT, check=True, capture_output=True, text=True)
    svc = dict(line.split("=", 1) for line in services.stdout.split() if "=" in line)
    db_name = os.environ.get("BENCH_SOAK_DB", "bench_soak")
    db_url = svc["DATABASE_URL"].rsplit("/", 1)[0] + "/" + db_name
    redis_url = svc["REDIS_URL"].rsplit("/", 1)[0] + "/" + os.environ.get("BENCH_SOAK_REDIS_DB", "13")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "CELERY_"))},
           "DJANGO_SETTINGS_MODULE": "billing_project.settings.production", "DATABASE_URL": db_url,
           "REDIS_URL": redis_url, "CELERY_QUEUE": f"soak-{os.getpid()}", "SECRET_KEY": f"soak-secret-{uuid.uuid4()}",
           "ORCHESTRATOR_SERVICE_TOKEN": TOKEN, "STRIPE_SECRET_KEY": "sk_test_soak_unused",
           "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "SECURE_SSL_REDIRECT": "false", "LOG_LEVEL": "WARNING",
           "CONN_MAX_AGE": "600", "EMAIL_URL": "dummymail://", "PYTHONUNBUFFERED": "1"}
    os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY",
                                           "ORCHESTRATOR_SERVICE_TOKEN", "STRIPE_SECRET_KEY",
                                           "STRIPE_WEBHOOK_SECRET")})
    import MySQLdb

    u = urlparse(db_url)
    db = MySQLdb.connect(host=u.hostname, port=u.port, user=u.username, password=u.password)
    db.cursor().execute(f"DROP DATABASE IF EXISTS `{db_name}`")
    db.cursor().execute(f"CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    db.close()
    print(f"==> soak database {db_name} (recreated), migrations, static files")
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    subprocess.run([PY, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    prep = json.loads(subprocess.run([PY, __file__, "prepare"], cwd=ROOT, env=env, check=True, capture_output=True,
                                     text=True).stdout.strip().splitlines()[-1])

    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    port = _free_port()
    workers, threads = os.environ.get("BENCH_WORKERS", "2"), os.environ.get("BENCH_THREADS", "8")
    procs = []
    with open(artifacts / "soak-gunicorn.log", "wb") as glog, open(artifacts / "soak-worker.log", "wb") as wlog:
        procs.append(subprocess.Popen(
            [str(Path(PY).parent / "gunicorn"), "billing_project.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", workers, "--threads", threads, "--worker-class", "gthread", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=glog, stderr=subprocess.STDOUT, start_new_session=True))
        procs.append(subprocess.Popen(
            [PY, "-m", "celery", "-A", "billing_project", "worker", "-Q", env["CELERY_QUEUE"], "--concurrency", "1",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True))
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _answers(base), 60, "gunicorn")
        print(f"==> soak {SECONDS:.0f} s against {base} (gunicorn {workers}x{threads} gthread, settings.production, "
              f"1 Celery worker); clients {CLIENTS}")
        stats = Stats()
        started = time.monotonic()
        run_load(base, prep["orgs"], stats, started + SECONDS)
        elapsed = time.monotonic() - started
        total_5xx = print_figures(stats, elapsed)

        def webhooks_done() -> bool:
            state = json.loads(subprocess.run([PY, __file__, "webhook-state"], cwd=ROOT, env=env, check=True,
                                              capture_output=True, text=True).stdout.strip().splitlines()[-1])
            webhooks_done.state = state  # type: ignore[attr-defined]
            return not state.get("pending")

        _wait(webhooks_done, 120, "the worker to process every webhook")
        print(f"==> webhook events by status after the worker drained the queue: {webhooks_done.state}")  # type: ignore[attr-defined]
        rec = subprocess.run([PY, "manage.py", "reconcile", "--json"], cwd=ROOT, env=env, capture_output=True,
                             text=True)
        report = json.loads(rec.stdout)
        print(f"==> reconcile: {report['checkedOrgs']} orgs checked, drift = {report['driftedOrgs']} "
              f"({report['seconds']} s)")
        failed = bool(total_5xx) or report["driftedOrgs"] != 0 or bool(webhooks_done.state.get("failed"))  # type: ignore[attr-defined]
        return 1 if failed else 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "prepare":
        prepare()
    elif len(sys.argv) > 1 and sys.argv[1] == "webhook-state":
        webhook_state()
    else:
        sys.exit(main())
