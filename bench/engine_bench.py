"""Usage-API benchmark: drives the real HTTP API (gunicorn started by scripts/bench.sh) and prints
actions/s and p50/p99 latency, then the raw mysqlclient ceiling and the drift check.

    engine_bench.py <base_url> <token> <prepare.json>

Scenarios (BENCH_SECONDS each, default 8):
  hot     one org, BENCH_CLIENTS (32) concurrent keep-alive clients, POST /record, unique idempotency keys
  orgs    the same clients spread over the 100 bench orgs
  batch   BENCH_BATCH_CLIENTS (4) clients, POST /record-batch with 1000 actions each
  raw     the same SQL the hot path issues (SET autocommit=0; SELECT … FOR UPDATE; UPDATE; INSERT;
          COMMIT; SET autocommit=1) from a bare mysqlclient loop, 32 threads, one org
A tiny raw-socket HTTP/1.1 client keeps the load generator's own CPU cost low (the machine has 2
cores shared by gunicorn, MariaDB and this script). Figures are printed, never asserted.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "32"))
BATCH_CLIENTS = int(os.environ.get("BENCH_BATCH_CLIENTS", "4"))
BATCH_SIZE = 1000
TIERS = ("small", "medium", "large", "xl")


class Conn:
    """Keep-alive HTTP/1.1 over one socket; just enough for JSON request/response."""

    def __init__(self, host: str, port: int):
        self.addr = (host, port)
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.addr, timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw: bytes) -> tuple[int, bytes]:
        try:
            return self._request(raw)
        except (ConnectionError, OSError):
            self.sock.close()
            self._connect()
            return self._request(raw)

    def _request(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        buf = self.buf
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lower = head.lower()
        status = int(head[9:12])
        i = lower.find(b"content-length:")
        length = int(lower[i + 15:lower.find(b"\r\n", i) if lower.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            rest += chunk
        self.buf = rest[length:]
        if b"connection: close" in lower:
            self.sock.close()
            self._connect()
        return status, rest[:length]


def _req(host: str, path: str, token: str, body: dict) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_clients(n: int, seconds: float, make_request, count_actions) -> dict:
    """n threads, each with its own connection, looping until the deadline."""
    lat: list[list[float]] = [[] for _ in range(n)]
    statuses: list[Counter] = [Counter() for _ in range(n)]
    actions = [0] * n
    start_barrier = threading.Barrier(n + 1)
    stop = [0.0]

    def client(k: int) -> None:
        conn = Conn(HOST, PORT)
        seq = 0
        start_barrier.wait()
        while time.perf_counter() < stop[0]:
            raw = make_request(k, seq)
            seq += 1
            t0 = time.perf_counter()
            status, body = conn.request(raw)
            lat[k].append(time.perf_counter() - t0)
            statuses[k][status] += 1
            actions[k] += count_actions(status, body)
        conn.sock.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    stop[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start_barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_lat = [x for xs in lat for x in xs]
    st = sum(statuses, Counter())
    return {"requests": len(all_lat), "actions": sum(actions), "seconds": elapsed,
            "actions_per_s": sum(actions) / elapsed, "requests_per_s": len(all_lat) / elapsed,
            "p50_ms": _pct(all_lat, 50) * 1000, "p99_ms": _pct(all_lat, 99) * 1000,
            "mean_ms": (statistics.fmean(all_lat) * 1000) if all_lat else float("nan"), "statuses": dict(st)}


def _single_counter(status: int, body: bytes) -> int:
    return 1 if status == 201 else 0


def _batch_counter(status: int, body: bytes) -> int:
    return json.loads(body)["recorded"] if status == 200 else 0


def show(name: str, r: dict) -> None:
    print(f"  {name:<34} {r['actions_per_s']:>9,.0f} actions/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
          f"  ({r['actions']:,} actions, {r['requests']:,} requests, {r['seconds']:.1f} s, statuses {r['statuses']})",
          flush=True)


def raw_ceiling(org_id: str, n: int, seconds: float, db_url: str | None = None) -> dict:
    """The hot path's SQL, issued by bare mysqlclient connections (no Django, no HTTP)."""
    import datetime as dt

    import MySQLdb

    from billing.services.balance import _SELECT_FOR_UPDATE, _TABLE
    from usage.services import _INSERT_COLUMNS, _INSERT_SQL, _ROW_PLACEHOLDER

    url = urlparse(db_url or os.environ["DATABASE_URL"])
    update = f"UPDATE {_TABLE} SET topup_used = %s, version = version + 1, updated_at = %s WHERE id = %s"
    insert = _INSERT_SQL + _ROW_PLACEHOLDER
    org_hex = uuid.UUID(org_id).hex
    cols = _SELECT_FOR_UPDATE.split("SELECT ", 1)[1].split(" FROM")[0].split(", ")
    i_id, i_used, i_ps, i_pe = cols.index("id"), cols.index("topup_used"), cols.index("period_start"), \
        cols.index("period_end")

    def loop(k: int, out: list) -> None:
        db = MySQLdb.connect(host=url.hostname, port=url.port or 3306, user=url.username, password=url.password,
                             database=url.path.lstrip("/"), charset="utf8mb4")
        db.cursor().execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur = db.cursor()
        lat = []
        seq = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            db.autocommit(False)
            cur.execute(_SELECT_FOR_UPDATE, [org_hex])
            row = cur.fetchone()
            now = dt.datetime.utcnow().replace(microsecond=0)
            cur.execute(update, [row[i_used] + Decimal("1.00"), now, row[i_id]])
            body = json.dumps({"success": True, "creditsUsed": "1.00", "paidFrom": "credits"})
            # by column name: a column a migration adds is NULL here (as nullable new columns are)
            values = {"organization_id": org_hex, "user_id": f"raw{k}", "tier": "small",
                      "credits_charged": Decimal("1.00"), "paid_from": "credits", "payout_cents": 2,
                      "period_start": row[i_ps], "period_end": row[i_pe], "idempotency_key": f"raw-{k}-{seq}",
                      "response_body": body, "created_at": now}
            cur.execute(insert, [values.get(c) for c in _INSERT_COLUMNS])
            db.commit()
            db.autocommit(True)
            seq += 1
            lat.append(time.perf_counter() - t0)
        db.close()
        out.extend(lat)

    lats: list[list[float]] = [[] for _ in range(n)]
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k, lats[k])) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    all_lat = [x for xs in lats for x in xs]
    return {"requests": len(all_lat), "actions": len(all_lat), "seconds": elapsed,
            "actions_per_s": len(all_lat) / elapsed, "p50_ms": _pct(all_lat, 50) * 1000,
            "p99_ms": _pct(all_lat, 99) * 1000, "statuses": {"committed": len(all_lat)}}


def run(base_url: str, token: str, prep: dict, *, seconds: float = SECONDS, clients: int = CLIENTS,
        batch_clients: int = BATCH_CLIENTS, batch_size: int = BATCH_SIZE, warm_seconds: float = 1.5,
        scenarios: tuple[str, ...] = ("hot", "orgs", "batch", "raw"), db_url: str | None = None,
        results_path: Path | None = None) -> dict:
    """Every scenario against the API at `base_url` (orgs from engine_prepare.setup); prints the figures
    and returns them. `db_url` (default DATABASE_URL) is the database the raw ceiling loop writes to."""
    global HOST, PORT
    u = urlparse(base_url)
    HOST, PORT = u.hostname, u.port
    hot, orgs = prep["hot"], prep["orgs"]
    run_id = uuid.uuid4().hex[:8]
    host = f"{HOST}:{PORT}"

    def single(org_for, scenario):
        def make(k: int, seq: int) -> bytes:
            return _req(host, "/api/billing/usage/record", token, {
                "orgId": org_for(k, seq), "userId": f"user-{k}", "actionTier": TIERS[seq % 4],
                "agentId": "bench-agent", "idempotencyKey": f"{run_id}-{scenario}-{k}-{seq}"})
        return make

    print(f"Usage API benchmark: {clients} clients, {seconds:.0f} s per scenario, gunicorn at {base_url}", flush=True)
    if warm_seconds:
        run_clients(clients, warm_seconds, single(lambda k, s: orgs[(k + s) % len(orgs)], "warm"), _single_counter)
    results = {}
    if "hot" in scenarios:
        results["hot"] = run_clients(clients, seconds, single(lambda k, s: hot, "hot"), _single_counter)
        show(f"hot org, {clients} clients, /record", results["hot"])
    if "orgs" in scenarios:
        results["orgs"] = run_clients(clients, seconds, single(lambda k, s: orgs[(k * 7 + s) % len(orgs)], "orgs"),
                                      _single_counter)
        show(f"{len(orgs)} orgs, {clients} clients, /record", results["orgs"])

    def batch(k: int, seq: int) -> bytes:
        return _req(host, "/api/billing/usage/record-batch", token, {
            "orgId": orgs[(k + seq) % len(orgs)] if k % 2 else hot,
            "actions": [{"userId": f"u{k}", "actionTier": TIERS[i % 4]} for i in range(batch_size)]})
    if "batch" in scenarios:
        results["batch"] = run_clients(batch_clients, seconds, batch, _batch_counter)
        show(f"batch x{batch_size}, {batch_clients} clients", results["batch"])

    ratio = None
    if "raw" in scenarios:
        import django
        django.setup()
        results["raw"] = raw_ceiling(prep["raw"], clients, seconds, db_url=db_url)
        show(f"raw mysqlclient, {clients} threads", results["raw"])
        if "hot" in results:
            ratio = results["hot"]["actions_per_s"] / results["raw"]["actions_per_s"]
            print(f"  API/raw ratio (hot org): {ratio:.2f}", flush=True)
    if "hot" in results and "batch" in results:
        hot_ok = results["hot"]["actions_per_s"] >= 1000 and results["hot"]["p99_ms"] <= 50
        print(f"  targets: hot >= 1,000 actions/s with p99 <= 50 ms: {'MET' if hot_ok else 'MISSED'}; "
              f"batch >= 20,000 actions/s: {'MET' if results['batch']['actions_per_s'] >= 20000 else 'MISSED'}",
              flush=True)
    results["api_raw_ratio"] = ratio
    if results_path is not None:
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    base_url, token, prep_path = sys.argv[1:4]
    run(base_url, token, json.loads(Path(prep_path).read_text()),
        scenarios=tuple(os.environ.get("BENCH_SCENARIOS", "hot,orgs,batch,raw").split(",")),
        results_path=Path(os.environ.get("BENCH_RESULTS", "test-artifacts/bench-engine.json")))


HOST, PORT = "127.0.0.1", 0

if __name__ == "__main__":
    main()
