#!/usr/bin/env bash
# Start a real PostgreSQL server on loopback for the tests that need one.
#
#     eval "$(scripts/ci_postgres.sh)"      # sets SYNTH_TEST_PG_URL in this shell
#
# Prints only `export SYNTH_TEST_PG_URL=...` on stdout (progress goes to stderr).
# Idempotent: a second run finds the cluster running and prints the same URL.
#
# As root (CI): installs Debian's `postgresql` package when missing, creates a
# dedicated cluster ($SYNTH_CI_PG_CLUSTER, default `synthci`) with
# pg_createcluster listening on 127.0.0.1:$SYNTH_CI_PG_PORT (default 54329) and
# starts it with pg_ctlcluster as the postgres user. As another user (a
# developer machine): initdb + pg_ctl on a data directory of your own
# ($SYNTH_CI_PG_DATA, default ~/.cache/synth-ci-pg). Either way it creates the
# role `synth` (password `synth`) and the database `synth_test`.
set -euo pipefail

PORT="${SYNTH_CI_PG_PORT:-54329}"
CLUSTER="${SYNTH_CI_PG_CLUSTER:-synthci}"
DB=synth_test
ROLE=synth
PASSWORD=synth
URL="postgresql://${ROLE}:${PASSWORD}@127.0.0.1:${PORT}/${DB}"

log() { echo "ci_postgres: $*" >&2; }
die() { log "$*"; exit 1; }

pg_bin() {  # the newest installed server's bin directory
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$dir" ] && echo "$dir"
}

if [ -z "$(pg_bin)" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing postgresql (apt-get)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  else
    die "PostgreSQL is not installed; install Debian's postgresql package (needs root)"
  fi
fi
BIN="$(pg_bin)" || die "no PostgreSQL server binaries under /usr/lib/postgresql"
VERSION="$(basename "$(dirname "$BIN")")"

if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u postgres -- "$@"; }
  if ! pg_lsclusters -h | awk '{print $1 "/" $2}' | grep -qx "${VERSION}/${CLUSTER}"; then
    log "creating cluster ${VERSION}/${CLUSTER} on 127.0.0.1:${PORT}"
    pg_createcluster "$VERSION" "$CLUSTER" -p "$PORT" \
      -- --auth-local=peer --auth-host=scram-sha-256 >&2
    # conf.d (included by Debian's postgresql.conf) overrides the generated settings.
    printf "listen_addresses = '127.0.0.1'\nmax_connections = 300\n" \
      >"/etc/postgresql/${VERSION}/${CLUSTER}/conf.d/synth-ci.conf"
  fi
  if ! pg_lsclusters -h | awk -v c="$CLUSTER" -v v="$VERSION" '$1 == v && $2 == c {print $4}' \
      | grep -qx online; then
    log "starting cluster ${VERSION}/${CLUSTER}"
    as_pg pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
  fi
  SOCKET_DIR=/var/run/postgresql
else
  as_pg() { "$@"; }
  DATA="${SYNTH_CI_PG_DATA:-$HOME/.cache/synth-ci-pg}"
  SOCKET_DIR="$DATA/socket"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initdb in $DATA"
    mkdir -p "$DATA"
    "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 >&2
  fi
  mkdir -p "$SOCKET_DIR"
  if ! "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "starting PostgreSQL in $DATA on 127.0.0.1:${PORT}"
    "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
      -o "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$SOCKET_DIR -c max_connections=300" \
      start >&2
  fi
fi

for _ in $(seq 1 100); do
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.1
done
"$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" || die "PostgreSQL did not come up on 127.0.0.1:${PORT}"

psql_admin() { as_pg "$BIN/psql" -h "$SOCKET_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '${ROLE}'")" != 1 ]; then
  psql_admin -c "CREATE ROLE ${ROLE} LOGIN CREATEDB PASSWORD '${PASSWORD}'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '${DB}'")" != 1 ]; then
  psql_admin -c "CREATE DATABASE ${DB} OWNER ${ROLE}" >&2
fi
log "ready: ${URL}"
echo "export SYNTH_TEST_PG_URL=${URL}"
