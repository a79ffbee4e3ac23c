#!/usr/bin/env bash
# `make run`: install, migrate, seed the demo org, serve the dashboard on
# http://127.0.0.1:8000 with embedded defaults (SQLite, eager tasks, the
# bundled Stripe simulator). Set DATABASE_URL / REDIS_URL / STRIPE_* to use
# the production stack instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh run
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-billing_project.settings.local}"
mkdir -p .local
PY=.venv/bin/python
HOST="${RUN_HOST:-127.0.0.1}"; PORT="${RUN_PORT:-8000}"

pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ -x scripts/run-extras.sh ]; then
  # Optional dev side-services (the Stripe simulator) append their PIDs here.
  source scripts/run-extras.sh
fi

$PY manage.py migrate --noinput -v 0
$PY manage.py collectstatic --noinput -v 0
$PY manage.py seed_demo --base-url "http://$HOST:$PORT"
echo "==> serving on http://$HOST:$PORT  (Ctrl-C to stop)"
$PY -m gunicorn billing_project.wsgi:application --bind "$HOST:$PORT" \
  --workers "${WEB_CONCURRENCY:-2}" --threads 4 --access-logfile - &
pids+=("$!")
wait "${pids[-1]}"
