"""Private service instances for fault tests: MariaDB, Redis, the Stripe simulator, gunicorn and a
Celery worker, each a process this module started and stops by PID — so a test may kill -9 or
restart them without touching the shared MariaDB (33061) / Redis (63791) everyone else uses.

    db = PrivateMariaDB(root / "mariadb"); db.start()       # mariadb-install-db on first start
    db.kill(); db.start()                                    # crash + restart, same datadir and port
    redis = PrivateRedis(root / "redis"); redis.start(); redis.stop(); redis.start()
    app = AppProcess.gunicorn(env, log); worker = AppProcess.celery_worker(env, log, queue="q")

MariaDB runs with the flags of scripts/services.sh (smaller buffer pool). Nothing here sleeps as
synchronisation: readiness is polled with a deadline.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
PY = sys.executable
DB_USER = "billing"
DB_PASS = "billing-faults-pw"


def poll(predicate: Callable[[], object], *, timeout: float, message: str, interval: float = 0.05) -> object:
    """tests.helpers.wait_until (its WaitTimedOut is a TimeoutError too)."""
    return wait_until(predicate, timeout=timeout, message=message, interval=interval)


def _real_clock_env() -> dict[str, str]:
    """This environment without libfaketime: Debian's redis links jemalloc, which deadlocks in
    libfaketime's start-up (wolfcw/libfaketime#130), so under `make test-dates` Redis keeps the real
    clock (as in scripts/services.sh)."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _quiet(cmd: list[str], timeout: float = 10, env: dict[str, str] | None = None) -> bool:
    try:
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
                              env=env).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _stop_process(proc: subprocess.Popen | None, *, sig: int = signal.SIGTERM, group: bool = False,
                  timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=10)


class PrivateMariaDB:
    """A throwaway mariadbd on its own datadir, port and socket."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.datadir = root / "data"
        # unix socket paths are limited to ~107 bytes: keep it short
        self.socket = Path(f"/tmp/faults-mdb-{os.getpid()}-{self.port}.sock")
        self.err_log = root / "mariadb.err"
        self.proc: subprocess.Popen | None = None

    def url(self, db_name: str) -> str:
        return f"mysql://{DB_USER}:{DB_PASS}@127.0.0.1:{self.port}/{db_name}"

    def _ping(self) -> bool:
        return _quiet(["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"], timeout=5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        if self.alive():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fresh = not (self.datadir / "mysql").exists()
        if fresh:
            subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={self.datadir}",
                            "--auth-root-authentication-method=normal", "--skip-test-db"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=root", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--pid-file={self.root / 'mariadb.pid'}", f"--port={self.port}", "--bind-address=127.0.0.1",
             "--skip-name-resolve", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=2",
             "--innodb-buffer-pool-size=64M", "--max-connections=300",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
             f"--log-error={self.err_log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            poll(lambda: (not self.alive()) or self._ping(), timeout=timeout, message="private MariaDB", interval=0.1)
        except TimeoutError:
            self.kill()
            raise
        if not self.alive():
            raise RuntimeError(f"private MariaDB exited at start:\n{self.err_log.read_text()[-2000:]}")
        if fresh:
            sql = (f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASS}';"
                   f"GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'127.0.0.1'; FLUSH PRIVILEGES;")
            subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", sql],
                           check=True, timeout=30)

    def create_database(self, name: str) -> None:
        subprocess.run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot", "-e",
                        f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"], check=True, timeout=30)

    def kill(self) -> None:
        """kill -9: a crash (InnoDB recovers on the next start)."""
        _stop_process(self.proc, sig=signal.SIGKILL, timeout=20)

    def stop(self) -> None:
        _stop_process(self.proc, sig=signal.SIGTERM, timeout=60)

    def restart(self) -> None:
        self.stop()
        self.start()


class PrivateRedis:
    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ping(self) -> bool:
        return _quiet(["redis-cli", "-p", str(self.port), "ping"], timeout=5, env=_real_clock_env())

    def start(self, timeout: float = 20) -> None:
        if self.alive():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=_real_clock_env())
        poll(lambda: (not self.alive()) or self.ping(), timeout=timeout, message="private Redis")
        if not self.alive():
            raise RuntimeError("private Redis exited at start")

    def stop(self) -> None:
        _stop_process(self.proc, sig=signal.SIGTERM, timeout=20)

    def kill(self) -> None:
        _stop_process(self.proc, sig=signal.SIGKILL, timeout=20)


class AppProcess:
    """gunicorn, a Celery worker or the simulator, started in its own process group."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, url: str = "") -> None:
        self.cmd, self.env, self.log_path, self.url = cmd, env, log_path, url
        self.proc: subprocess.Popen | None = None

    @classmethod
    def gunicorn(cls, env: dict[str, str], log_path: Path, *, workers: int = 2, threads: int = 8) -> AppProcess:
        port = free_port()
        cmd = [str(Path(PY).parent / "gunicorn"), "billing_project.wsgi:application", "--bind", f"127.0.0.1:{port}",
               "--workers", str(workers), "--threads", str(threads), "--worker-class", "gthread",
               "--timeout", "60", "--graceful-timeout", "5", "--log-level", "warning"]
        return cls(cmd, env, log_path, url=f"http://127.0.0.1:{port}")

    @classmethod
    def celery_worker(cls, env: dict[str, str], log_path: Path, *, queue: str, pool: str = "prefork",
                      concurrency: int = 1) -> AppProcess:
        cmd = [PY, "-m", "celery", "-A", "billing_project", "worker", "-Q", queue, "-n", f"{queue}@localhost",
               "--pool", pool, "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
               "--without-heartbeat", "--loglevel", "INFO"]
        return cls(cmd, env, log_path)

    @classmethod
    def stripe_sim(cls, env: dict[str, str], log_path: Path) -> AppProcess:
        port = free_port()
        return cls([PY, "-m", "stripe_sim", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
                   env, log_path, url=f"http://127.0.0.1:{port}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, ready_path: str | None = None, ready: Callable[[], bool] | None = None,
              timeout: float = 60) -> AppProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if ready_path is not None:
            ready = lambda: _http_answers(self.url + ready_path)  # noqa: E731
        if ready is not None:
            poll(lambda: (not self.alive()) or ready(), timeout=timeout, message=f"{self.cmd[:3]} ready",
                 interval=0.1)
            if not self.alive():
                raise RuntimeError(f"{self.cmd[:3]} exited at start:\n{self.log()[-3000:]}")
        return self

    def children(self) -> list[int]:
        """PIDs of the direct children (prefork pool processes of a Celery worker)."""
        if not self.alive():
            return []
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        _stop_process(self.proc, sig=signal.SIGTERM, group=True, timeout=20)

    def kill(self) -> None:
        _stop_process(self.proc, sig=signal.SIGKILL, group=True, timeout=10)


def _http_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
