#!/usr/bin/env bash
# `make test`: install what is missing, start throwaway MariaDB + Redis, run the
# whole pytest suite against MariaDB, stop what this run started (also on failure).
# Extra arguments go to pytest. KEEP_SERVICES=1 leaves the services running.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test

started=0
if [ "$(scripts/services.sh status | grep -c up)" != 2 ]; then started=1; fi
cleanup() {
  if [ "$started" = 1 ] && [ "${KEEP_SERVICES:-0}" != 1 ]; then scripts/services.sh stop; fi
}
trap cleanup EXIT
eval "$(scripts/services.sh start | sed 's/^/export /')"
export DJANGO_SETTINGS_MODULE=billing_project.settings.test
mkdir -p test-artifacts
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
exit $rc
