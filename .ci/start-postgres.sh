#!/usr/bin/env bash
# Start a PostgreSQL cluster for an MLflow tracking server on this machine (Debian's binaries, installed if
# missing): its own data directory, 127.0.0.1 only, a free port, a role and database `mlflow` (password
# login over TCP; the `postgres` superuser only over the cluster's unix socket). Runs the cluster as the
# `postgres` user when started as root (initdb and postgres refuse root), else as the calling user.
# Idempotent: a cluster already up is left as it is and its URI printed again. Prints how to connect; the
# URI also goes to $EP_CORE_PG_DIR/uri.
#   EP_CORE_PG_DIR       the cluster's directory (default /var/tmp/ep-core-postgres)
#   EP_CORE_PG_PORT      its port (default: the first free one from 5433)
#   EP_CORE_PG_PASSWORD  the mlflow role's password (default mlflow: a local test cluster)
# tests/test_postgres.py starts its own throwaway clusters from the same binaries (and runs this script
# once in a temporary directory); .ci/run calls it so that the binaries are there.
set -euo pipefail

DIR=${EP_CORE_PG_DIR:-/var/tmp/ep-core-postgres}
PASSWORD=${EP_CORE_PG_PASSWORD:-mlflow}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

bindir() {
  local found
  found=$(command -v pg_ctl || true)
  if [ -n "$found" ]; then dirname "$(readlink -f "$found")"; return; fi
  # Debian keeps the server binaries off PATH, one directory per major version: the newest.
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$found" ] && [ -x "$found/initdb" ] && echo "$found"
}

BIN=$(bindir || true)
if [ -z "$BIN" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  BIN=$(bindir)
fi

AS=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "no 'postgres' user to run PostgreSQL as" >&2; exit 1; }
  AS=(runuser -u postgres --)
fi
mkdir -p "$DIR"
[ ${#AS[@]} -eq 0 ] || chown postgres: "$DIR"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -f "$DIR/port" ]; then
  PORT=$(cat "$DIR/port")
else
  PORT=${EP_CORE_PG_PORT:-}
  if [ -z "$PORT" ]; then
    for PORT in $(seq 5433 5533); do port_free "$PORT" && break; done
  fi
fi

if [ ! -f "$DIR/data/PG_VERSION" ]; then
  "${AS[@]}" "$BIN/initdb" -D "$DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --no-locale >"$DIR/initdb.log"
fi
if ! "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 120 \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" start >/dev/null
fi
echo "$PORT" >"$DIR/port"

psql() { "${AS[@]}" "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'")" != 1 ]; then
  psql -c "CREATE ROLE mlflow LOGIN PASSWORD '$PASSWORD'"
fi
if [ "$(psql -c "SELECT 1 FROM pg_database WHERE datname = 'mlflow'")" != 1 ]; then
  psql -c "CREATE DATABASE mlflow OWNER mlflow"
fi

URI="postgresql://mlflow:$PASSWORD@127.0.0.1:$PORT/mlflow"
echo "$URI" >"$DIR/uri"
echo "PostgreSQL up ($("$BIN/postgres" --version)), data in $DIR/data, log $DIR/postgres.log"
echo "  backend store: $URI"
echo "  mlflow server --backend-store-uri $URI --artifacts-destination DIR --workers 2"
echo "  stop: ${AS[*]}${AS[*]:+ }$BIN/pg_ctl -D $DIR/data stop"
