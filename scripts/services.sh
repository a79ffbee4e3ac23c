#!/usr/bin/env bash
# Throwaway MariaDB + Redis on loopback, in a project-local folder (.local/).
# No systemd, no docker. Fast-and-unsafe durability settings: tests only.
#   scripts/services.sh start   # idempotent; prints the env lines to use
#   scripts/services.sh stop
#   scripts/services.sh env     # prints DATABASE_URL / REDIS_URL
# Env: SERVICES_DIR (.local/services), TEST_MARIADB_PORT (33061), TEST_REDIS_PORT (63791): a second
# set of services (e.g. `make test-dates`) runs beside the first with its own dir and ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${SERVICES_DIR:-$PWD/.local/services}"
case "$ROOT" in /*) ;; *) ROOT="$PWD/$ROOT" ;; esac
MDB_PORT="${TEST_MARIADB_PORT:-33061}"
REDIS_PORT="${TEST_REDIS_PORT:-63791}"
MDB_DIR="$ROOT/mariadb"
MDB_PID="$ROOT/mariadb.pid"
MDB_SOCK="$ROOT/mariadb.sock"
REDIS_PID="$ROOT/redis.pid"
DB_USER=billing
DB_PASS=billing-test-pw
DB_NAME=billing

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

print_env() {
  echo "DATABASE_URL=mysql://$DB_USER:$DB_PASS@127.0.0.1:$MDB_PORT/$DB_NAME"
  echo "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
}

wait_for() {  # wait_for <seconds> <command...>
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

start_mariadb() {
  if alive "$MDB_PID"; then return 0; fi
  mkdir -p "$ROOT"
  local fresh=0
  if [ ! -d "$MDB_DIR/mysql" ]; then
    fresh=1
    mariadb-install-db --no-defaults --user=root --datadir="$MDB_DIR" \
      --auth-root-authentication-method=normal --skip-test-db >"$ROOT/mariadb-install.log" 2>&1
  fi
  mariadbd --no-defaults --user=root --datadir="$MDB_DIR" --socket="$MDB_SOCK" \
    --pid-file="$MDB_PID" --port="$MDB_PORT" --bind-address=127.0.0.1 \
    --skip-name-resolve --skip-log-bin --innodb-flush-log-at-trx-commit=2 \
    --innodb-buffer-pool-size=512M --max-connections=500 \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --log-error="$ROOT/mariadb.err" >/dev/null 2>&1 &
  if ! wait_for 30 mariadb-admin --no-defaults --socket="$MDB_SOCK" -uroot ping; then
    echo "MariaDB did not start; see $ROOT/mariadb.err" >&2; tail -20 "$ROOT/mariadb.err" >&2; exit 1
  fi
  if [ "$fresh" = 1 ]; then
    mariadb --no-defaults --socket="$MDB_SOCK" -uroot <<SQL
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';
CREATE DATABASE IF NOT EXISTS $DB_NAME CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
FLUSH PRIVILEGES;
SQL
  fi
}

start_redis() {
  if alive "$REDIS_PID"; then return 0; fi
  mkdir -p "$ROOT"
  # Debian's redis links jemalloc, which deadlocks in libfaketime's start-up (wolfcw/libfaketime#130):
  # under `make test-dates` (LD_PRELOAD=libfaketime) Redis alone keeps the real clock. The app only
  # gives Redis relative TTLs, so its clock does not reach billing.
  env -u LD_PRELOAD redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize yes --pidfile "$REDIS_PID" --logfile "$ROOT/redis.log" --dir "$ROOT"
  if ! wait_for 10 env -u LD_PRELOAD redis-cli -p "$REDIS_PORT" ping; then
    echo "Redis did not start; see $ROOT/redis.log" >&2; exit 1
  fi
}

stop_pidfile() {
  local f="$1"
  if alive "$f"; then
    local pid; pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

case "${1:-}" in
  start) start_mariadb; start_redis; print_env ;;
  stop) stop_pidfile "$MDB_PID"; stop_pidfile "$REDIS_PID" ;;
  status) alive "$MDB_PID" && echo "mariadb up" || echo "mariadb down"
          alive "$REDIS_PID" && echo "redis up" || echo "redis down" ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
