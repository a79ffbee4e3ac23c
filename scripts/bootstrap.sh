#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine, and nothing
# twice: Debian packages (only the missing ones), then the venv from
# requirements.txt (re-installed only when requirements.txt changes).
#   scripts/bootstrap.sh run    -> build deps for mysqlclient only
#   scripts/bootstrap.sh test   -> + MariaDB, Redis, Chromium for the test suite
#   scripts/bootstrap.sh dates  -> + faketime (libfaketime) and gcc for `make test-dates`
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

pkgs=(libmariadb-dev pkg-config)
if [ "$mode" = "test" ] || [ "$mode" = "dates" ]; then
  pkgs+=(mariadb-server redis-server chromium)
fi
if [ "$mode" = "dates" ]; then
  pkgs+=(faketime gcc libc6-dev)  # gcc: scripts/faketime-waits.c
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip wheel
fi
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> pip install -r requirements.txt"
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
