#!/usr/bin/env bash
# `make test-dates` (not CI): the whole suite (scripts/test.sh) once per date, with the clock of the
# whole stack moved there by libfaketime (Debian's `faketime`): MariaDB, the Celery worker, the
# Stripe simulator, gunicorn, Chromium and pytest itself. Proves nothing depends on today's date.
#   make test-dates                                        # the three dates below
#   TEST_DATES="2028-02-29 12:00:00" make test-dates       # one date (UTC, `date -d` syntax)
#   make test-dates PYTEST_ARGS="-x usage"                 # extra pytest arguments
# Each date gets its own throwaway MariaDB + Redis (SERVICES_DIR=.local/services-dates, ports
# TEST_DATES_MARIADB_PORT 33071 / TEST_DATES_REDIS_PORT 63801), wiped first and stopped after, so it
# never touches the services of `make test` (33061 / 63791). Logs: test-artifacts/test-dates-*.log.
#
# How the clock moves: LD_PRELOAD=libfaketime with FAKETIME="+<seconds>s", an offset computed once
# per date. An offset (not "@<date>") keeps every process on one clock however late it starts: the
# worker and gunicorn started minutes into the run agree with pytest, and the clock ticks (a run at
# 31 Dec 23:59 crosses into the new year). Every child inherits the environment.
# libfaketime also moves CLOCK_MONOTONIC but does not convert the deadlines of sem_clockwait /
# pthread_cond_clockwait, so Python's timed waits would never time out: scripts/faketime-waits.c
# (compiled here into .local/, preloaded after libfaketime) converts them.
# Chromium (Debian 12's, headless, Playwright) runs under libfaketime as is: pages see the moved date.
# Known exception: Redis keeps the real clock (jemalloc deadlocks under libfaketime, see
# scripts/services.sh); the app gives Redis only relative TTLs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dates

lib="$(dpkg -L libfaketime | grep -m1 '/libfaketime\.so\.1$')"
[ -f "$lib" ] || { echo "libfaketime.so.1 not found (apt-get install faketime)" >&2; exit 1; }
waits=.local/faketime-waits.so
mkdir -p .local
if [ ! -f "$waits" ] || [ scripts/faketime-waits.c -nt "$waits" ]; then
  cc -shared -fPIC -O2 -Wall -o "$waits" scripts/faketime-waits.c -ldl
fi

if [ -n "${TEST_DATES:-}" ]; then
  IFS=',' read -r -a dates <<<"$TEST_DATES"
else
  dates=("2027-01-31 23:30:00" "2028-02-29 12:00:00" "2027-12-31 23:59:00")
fi

export SERVICES_DIR="${SERVICES_DIR:-$PWD/.local/services-dates}"
export TEST_MARIADB_PORT="${TEST_DATES_MARIADB_PORT:-33071}" TEST_REDIS_PORT="${TEST_DATES_REDIS_PORT:-63801}"
export KEEP_SERVICES=0
mkdir -p test-artifacts
summary=()
status=0
for d in "${dates[@]}"; do
  target="$(date -ud "$d UTC" +%s)"
  scripts/services.sh stop >/dev/null 2>&1 || true
  rm -rf "$SERVICES_DIR"  # a fresh datadir per date: MariaDB starts on that date
  log="test-artifacts/test-dates-$(date -ud "@$target" +%Y%m%dT%H%M).log"
  offset="$(printf '%+ds' $((target - $(date +%s))))"
  echo "==> $(date -ud "@$target" '+%F %T') UTC (FAKETIME=$offset), log $log"
  set +e
  LD_PRELOAD="$lib $PWD/$waits${LD_PRELOAD:+ $LD_PRELOAD}" FAKETIME="$offset" FAKETIME_DONT_RESET=1 \
    scripts/test.sh "$@" 2>&1 | tee "$log" | grep -E --line-buffered '^(FAILED|ERROR) |[0-9]+ (passed|failed)'
  rc=${PIPESTATUS[0]}
  set -e
  line="$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
  summary+=("$(date -ud "@$target" '+%F %T') UTC: rc=$rc ${line:-no summary (see $log)}")
  [ "$rc" = 0 ] || status=1
done
echo "==> test-dates summary"
printf '  %s\n' "${summary[@]}"
exit $status
