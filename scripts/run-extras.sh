#!/usr/bin/env bash
# Sourced by scripts/run.sh (before migrate): start the bundled Stripe simulator (a test double,
# see stripe_sim/README.md) unless real Stripe settings are in the environment, export the
# STRIPE_* settings pointing at it, and create the catalog prices and the billing portal configuration
# (STRIPE_PRICE_* and STRIPE_PORTAL_CONFIGURATION exported).
# Appends the simulator's PID to `pids` so run.sh stops it on exit.
if [ -z "${STRIPE_SECRET_KEY:-}" ] && [ -z "${STRIPE_API_BASE:-}" ]; then
  SIM_PORT="${STRIPE_SIM_PORT:-12111}"
  _sim_py="${PY:-.venv/bin/python}"
  _sim_up() { "$_sim_py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "$STRIPE_API_BASE/_sim/health" >/dev/null 2>&1; }
  export STRIPE_API_BASE="http://127.0.0.1:$SIM_PORT"
  export STRIPE_SECRET_KEY="sk_test_simulator"
  export STRIPE_WEBHOOK_SECRET="${STRIPE_WEBHOOK_SECRET:-whsec_dev_simulator}"
  if _sim_up; then
    echo "==> Stripe simulator already running on $STRIPE_API_BASE (reusing it)"
    "$_sim_py" -c 'import json, sys, urllib.request; urllib.request.urlopen(urllib.request.Request(
        sys.argv[1] + "/_sim/config", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"webhook_url": sys.argv[2], "webhook_secret": sys.argv[3]}).encode()), timeout=5)' \
      "$STRIPE_API_BASE" "http://${HOST:-127.0.0.1}:${PORT:-8000}/api/webhooks/stripe" "$STRIPE_WEBHOOK_SECRET"
  else
    mkdir -p .local
    "${PY:-.venv/bin/python}" -m stripe_sim --host 127.0.0.1 --port "$SIM_PORT" \
      --webhook-url "http://${HOST:-127.0.0.1}:${PORT:-8000}/api/webhooks/stripe" \
      --webhook-secret "$STRIPE_WEBHOOK_SECRET" --state-file .local/stripe_sim.json \
      >>.local/stripe_sim.log 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 100); do
      _sim_up && break
      sleep 0.1
    done
    _sim_up || { echo "Stripe simulator did not start; see .local/stripe_sim.log" >&2; exit 1; }
    echo "==> Stripe simulator (test double) on $STRIPE_API_BASE, log .local/stripe_sim.log"
  fi
  # Prices by lookup key, the portal configuration by metadata (idempotent; the state file keeps them).
  while IFS= read -r line; do
    case "$line" in STRIPE_PRICE_*=*|STRIPE_PORTAL_CONFIGURATION=*) export "$line"; echo "    $line" ;; esac
  done < <("${PY:-.venv/bin/python}" manage.py stripe_setup)
fi
