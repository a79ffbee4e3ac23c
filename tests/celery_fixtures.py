"""A real Celery worker for tests that need the async path (Redis broker, separate process).

Usage:
    @pytest.mark.worker
    @pytest.mark.django_db(transaction=True)     # the worker only sees committed rows
    def test_x(celery_worker): ...

The worker is one per test session, started lazily by the first test that asks for it, on its
own queue (so no other worker on the same Redis takes our tasks and runs them against another
database), pointed at this session's test database. While the fixture is active the test
process sends tasks to Redis instead of running them eagerly. Emails the worker sends land as
files; `celery_worker.outbox()` parses them.
"""
from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest

from .helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class WorkerHandle:
    process: subprocess.Popen
    queue: str
    hostname: str
    log_path: Path
    mail_dir: Path
    stripe_api_base: str = ""  # the Stripe (simulator) URL the worker's gateway talks to
    _seen: set = field(default_factory=set)

    def outbox(self) -> list[Message]:
        """Every email the worker has sent so far (all of them, oldest first)."""
        msgs = []
        for f in sorted(self.mail_dir.glob("*.log"), key=lambda p: p.stat().st_mtime):
            raw = f.read_text()
            for chunk in raw.split("-" * 79):
                chunk = chunk.strip()
                if chunk:
                    msgs.append(email.message_from_string(chunk))
        return msgs

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None


def _worker_env(*, db_name: str, queue: str, mail_dir: Path, stripe_api_base: str = "") -> dict[str, str]:
    from django.conf import settings
    from django.db import connection

    sd = connection.settings_dict
    url = f"mysql://{sd['USER']}:{sd['PASSWORD']}@{sd['HOST']}:{sd['PORT']}/{db_name}"
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "billing_project.settings.test",
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_QUEUE": queue,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "TEST_EMAIL_FILE_PATH": str(mail_dir),
        "PYTHONUNBUFFERED": "1",
    })
    # Handlers in the worker read from Stripe: point it at the session's simulator, unless a fixture
    # already exported another simulator into os.environ before the worker started (top-up tests).
    if stripe_api_base and not os.environ.get("STRIPE_API_BASE"):
        from .stripe_fixtures import SIM_SECRET_KEY, SIM_WEBHOOK_SECRET

        env.update({"STRIPE_API_BASE": stripe_api_base, "STRIPE_SECRET_KEY": SIM_SECRET_KEY,
                    "STRIPE_WEBHOOK_SECRET": SIM_WEBHOOK_SECRET})
    return env


@pytest.fixture(scope="session")
def _celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory, stripe_sim):
    from django.conf import settings
    from django.db import connection

    if not settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set: `make test` starts Redis")
    queue = f"billing-test-{os.getpid()}"
    hostname = f"testworker-{os.getpid()}@localhost"
    mail_dir = tmp_path_factory.mktemp("worker-mail")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    log_path = artifacts / f"celery-worker-{os.getpid()}.log"
    with django_db_blocker.unblock():
        db_name = connection.settings_dict["NAME"]
    from billing_project.celery import app

    with app.connection_for_write() as conn:  # stale messages from an aborted earlier run
        conn.default_channel.queue_purge(queue) if _queue_exists(conn, queue) else None
    worker_env = _worker_env(db_name=db_name, queue=queue, mail_dir=mail_dir, stripe_api_base=stripe_sim.base_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "billing_project", "worker", "-Q", queue, "-n", hostname,
         "--pool", "solo", "--concurrency", "1", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "--loglevel", "INFO", "--logfile", str(log_path)],
        cwd=ROOT, env=worker_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    handle = WorkerHandle(process=proc, queue=queue, hostname=hostname, log_path=log_path, mail_dir=mail_dir,
                          stripe_api_base=worker_env.get("STRIPE_API_BASE", ""))
    try:
        wait_until(lambda: (not handle.alive()) or app.control.ping(destination=[hostname], timeout=0.5),
                   timeout=60, message="the Celery worker to answer ping")
        if not handle.alive():
            raise RuntimeError(f"Celery worker died at start:\n{handle.log()[-3000:]}")
        yield handle
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _queue_exists(conn, queue: str) -> bool:
    try:
        conn.default_channel.queue_declare(queue=queue, passive=True)
        return True
    except Exception:  # noqa: BLE001 - passive declare raises when absent
        return False


@pytest.fixture
def celery_worker(_celery_worker_process, settings):
    """Route this test's task sends to the real worker (not eager)."""
    from billing_project.celery import app

    old = {k: app.conf.get(k) for k in ("task_always_eager", "task_default_queue")}
    settings.CELERY_TASK_ALWAYS_EAGER = False
    app.conf.task_always_eager = False
    app.conf.task_default_queue = _celery_worker_process.queue
    try:
        if not _celery_worker_process.alive():
            raise RuntimeError(f"Celery worker is not running:\n{_celery_worker_process.log()[-3000:]}")
        yield _celery_worker_process
    finally:
        app.conf.update(old)
