#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on localhost for tests/test_distributed.py and print its URL
# (the only line on stdout): export BSQ_TEST_POSTGRES_URL="$(.ci/postgres.sh)".
# Installs PostgreSQL where it is missing (needs root); safe to run again (reuses the server).
# Settings: BSQ_PG_DIR (data folder, default /tmp/bsq-postgres), BSQ_PG_PORT (default 55432).
set -euo pipefail

DATA_DIR=${BSQ_PG_DIR:-/tmp/bsq-postgres}
PORT=${BSQ_PG_PORT:-55432}
DB=bsq_test
DB_USER=bsq
DB_PASSWORD=bsq

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

if [ -z "$(find_bin)" ] && ! command -v pg_ctl >/dev/null; then
  log "installing postgresql"
  apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
fi
BIN=$(find_bin)
BIN=${BIN:-$(dirname "$(command -v pg_ctl)")}

# The server refuses to run as root: run it as the postgres user then.
if [ "$(id -u)" = 0 ]; then
  as_owner() { runuser -u postgres -- "$@"; }
else
  as_owner() { "$@"; }
fi

mkdir -p "$DATA_DIR"
[ "$(id -u)" = 0 ] && chown postgres: "$DATA_DIR" && chmod 700 "$DATA_DIR"

if [ ! -f "$DATA_DIR/PG_VERSION" ]; then
  log "initdb in $DATA_DIR"
  as_owner "$BIN/initdb" -D "$DATA_DIR" -U postgres --auth-local=trust --auth-host=scram-sha-256 >&2
fi

if ! as_owner "$BIN/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
  log "starting the server on 127.0.0.1:$PORT"
  as_owner "$BIN/pg_ctl" -D "$DATA_DIR" -l "$DATA_DIR/server.log" -w -t 60 \
    -o "-p $PORT -k $DATA_DIR -c listen_addresses=127.0.0.1" start >&2
fi

psql_admin() { as_owner "$BIN/psql" -h "$DATA_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtAc "$1"; }

if [ -z "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" ]; then
  psql_admin "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'" >&2
fi
if [ -z "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
  psql_admin "CREATE DATABASE $DB OWNER $DB_USER" >&2
fi

echo "postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB"
