#!/usr/bin/env bash
# `make bench`: usage-API throughput on the real stack (gunicorn + MariaDB + Redis), own database.
#   make bench          # hot org / 100 orgs / batch / raw mysqlclient ceiling, then the drift check
#   make bench reconcile  # 1M actions, time manage.py reconcile + peak RSS: bench/reconcile_bench.py
#   make bench soak     # mixed traffic for BENCH_SOAK_SECONDS (60) + drift check: bench/soak.py
# Env: BENCH_SECONDS (8), BENCH_CLIENTS (32), BENCH_BATCH_CLIENTS (4), BENCH_WORKERS (2),
#      BENCH_THREADS (16), BENCH_DB_NAME (bench), BENCH_ORGS (100). Figures are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
  soak) scripts/bootstrap.sh test >/dev/null; exec .venv/bin/python bench/soak.py ;;  # bench/soak.py (HARDEN-B)
  reconcile) scripts/bootstrap.sh test >/dev/null
    eval "$(scripts/services.sh start | sed 's/^/export /')"
    exec .venv/bin/python bench/reconcile_bench.py ;;  # `make bench reconcile` (Makefile)
  ""|engine) ;;
  *) echo "usage: $0 [soak|reconcile]" >&2; exit 2 ;;
esac

scripts/bootstrap.sh test >/dev/null
eval "$(scripts/services.sh start | sed 's/^/export /')"
DB_NAME="${BENCH_DB_NAME:-bench}"
base_url="${DATABASE_URL%/*}"
export DATABASE_URL="$base_url/$DB_NAME"
export DJANGO_SETTINGS_MODULE=billing_project.settings.production
export SECRET_KEY="bench-only-secret-key-$(date +%s)" ORCHESTRATOR_SERVICE_TOKEN="bench-orchestrator-token-$$"
export STRIPE_SECRET_KEY=sk_test_bench STRIPE_WEBHOOK_SECRET=whsec_bench SECURE_SSL_REDIRECT=false
export REDIS_URL="${REDIS_URL%/*}/${BENCH_REDIS_DB:-14}" CELERY_QUEUE=bench LOG_LEVEL=WARNING CONN_MAX_AGE=600
PY=.venv/bin/python

echo "==> database $DB_NAME (recreated), migrations"
$PY - <<PY
import os
from urllib.parse import urlparse
import MySQLdb
u = urlparse(os.environ["DATABASE_URL"])
db = MySQLdb.connect(host=u.hostname, port=u.port, user=u.username, password=u.password)
c = db.cursor()
c.execute("DROP DATABASE IF EXISTS \`$DB_NAME\`")
c.execute("CREATE DATABASE \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
PY
$PY manage.py migrate --noinput -v 0
mkdir -p test-artifacts
prep=test-artifacts/bench-orgs.json
$PY bench/engine_prepare.py setup > "$prep"

port="$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
workers="${BENCH_WORKERS:-2}"; threads="${BENCH_THREADS:-16}"
echo "==> gunicorn 127.0.0.1:$port ($workers workers x $threads threads, gthread, settings.production)"
.venv/bin/gunicorn billing_project.wsgi:application -c bench/gunicorn.conf.py --bind "127.0.0.1:$port" \
  --workers "$workers" --threads "$threads" --log-level warning \
  >test-artifacts/bench-gunicorn.log 2>&1 &
gpid=$!
cleanup() {
  kill "$gpid" 2>/dev/null || true
  wait "$gpid" 2>/dev/null || true
  redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true  # queued warning emails: no worker runs here
}
trap cleanup EXIT
deadline=$((SECONDS + 30))
until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
  kill -0 "$gpid" 2>/dev/null || { echo "gunicorn died:"; tail -30 test-artifacts/bench-gunicorn.log; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "gunicorn not ready"; exit 1; }
  sleep 0.2
done

$PY bench/engine_bench.py "http://127.0.0.1:$port" "$ORCHESTRATOR_SERVICE_TOKEN" "$prep"
echo "==> drift check (cached balances vs billable_actions rows)"
if $PY bench/engine_prepare.py drift > test-artifacts/bench-drift.json; then
  $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print("  zero drift: %d balances, %d actions" % (d["balances"], d["actions"]))' test-artifacts/bench-drift.json
else
  echo "  DRIFT FOUND:"; cat test-artifacts/bench-drift.json; exit 1
fi
