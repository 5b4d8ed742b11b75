#!/usr/bin/env bash
# PostgreSQL for the team usage database tests: Debian's packages, one cluster of our own on
# 127.0.0.1, a user and a database for the tests. Idempotent: a second run changes nothing.
# No systemd needed (pg_ctlcluster starts the server directly).
#
# Writes /var/lib/gpuhub-testbed/postgres.env:  GPUHUB_TEST_PG_URL=postgresql://...
# Environment: GPUHUB_PG_PORT (default 15432), GPUHUB_PG_CLUSTER (default gpuhub).
set -euo pipefail

STATE=/var/lib/gpuhub-testbed
ENV_FILE=$STATE/postgres.env
PORT=${GPUHUB_PG_PORT:-15432}
CLUSTER=${GPUHUB_PG_CLUSTER:-gpuhub}
DB=gpuhub_test
ROLE=gpuhub

if [ "$(id -u)" -ne 0 ]; then
  echo "postgres.sh: run as root (it installs packages and starts a server)" >&2
  exit 1
fi
mkdir -p "$STATE"

if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
fi
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)

if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION $CLUSTER"; then
  pg_createcluster "$VERSION" "$CLUSTER" -p "$PORT" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi
# Loopback only; our settings in a conf.d file (Debian's postgresql.conf reads that directory last).
CONF_DIR=/etc/postgresql/$VERSION/$CLUSTER
if grep -q "^listen_addresses" "$CONF_DIR/postgresql.conf"; then
  pg_conftool "$VERSION" "$CLUSTER" remove listen_addresses
fi
mkdir -p "$CONF_DIR/conf.d"
printf "listen_addresses = '127.0.0.1'\nmax_connections = 200\n" > "$CONF_DIR/conf.d/gpuhub.conf"
PORT=$(pg_conftool -s "$VERSION" "$CLUSTER" show port)

if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
  pg_ctlcluster "$VERSION" "$CLUSTER" start
fi
for _ in $(seq 50); do
  pg_isready -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.2
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { echo "postgres.sh: server on port $PORT did not come up" >&2; exit 1; }

# One password, made once and kept (the env file is root's only).
PASSWORD_FILE=$STATE/postgres.password
if [ ! -s "$PASSWORD_FILE" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$PASSWORD_FILE")
fi
PASSWORD=$(cat "$PASSWORD_FILE")

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" "$@"; }
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
  psql_admin -c "CREATE ROLE $ROLE LOGIN"
fi
psql_admin -c "ALTER ROLE $ROLE PASSWORD '$PASSWORD'"
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
fi

(umask 077; echo "GPUHUB_TEST_PG_URL=postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB" > "$ENV_FILE")
echo "postgres: PostgreSQL $VERSION cluster $CLUSTER on 127.0.0.1:$PORT, database $DB ($ENV_FILE)"
