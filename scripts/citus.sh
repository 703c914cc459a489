#!/usr/bin/env bash
# A real Citus cluster for the Citus tests, idempotently: builds Citus 13.2.2 from the
# source beside the project (../shared/citus, or IDEM_CITUS_SOURCE: the tarball and its
# patch; no registry needed) into Debian's Postgres 15, then starts a coordinator on
# 127.0.0.1:5433 and two workers on 5434 and 5435 (clusters `citus5433`... of
# `pg_ctlcluster`), with the workers added to the coordinator. Prints the coordinator's
# URL, which IDEM_TEST_CITUS_URL takes. With `--database NAME`, it also makes NAME a
# fresh Citus database (dropped first if it exists: on every node, the extension, the
# workers added) and prints that database's URL instead, as DATABASE_URL takes it.
# Needs root (apt-get, pg_createcluster). Usage: scripts/citus.sh [--database NAME]
set -euo pipefail

database=""
case "${1:-}" in
  --database)
    database="${2:?--database needs a name}"
    [[ "$database" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "not a plain database name: $database" >&2; exit 2; }
    ;;
  "") ;;
  *) echo "usage: scripts/citus.sh [--database NAME]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="${IDEM_CITUS_SOURCE:-$here/../../shared/citus}"
version=13.2.2
coordinator=5433
workers=(5434 5435)

need=()
for package in postgresql-15 postgresql-server-dev-15 build-essential liblz4-dev \
  libzstd-dev libssl-dev libkrb5-dev libicu-dev; do
  dpkg -s "$package" >/dev/null 2>&1 || need+=("$package")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

pg_config=/usr/lib/postgresql/15/bin/pg_config
if [ ! -f "$("$pg_config" --pkglibdir)/citus.so" ]; then
  [ -f "$source_dir/citus-$version.tar.gz" ] || {
    echo "no citus-$version.tar.gz in $source_dir (set IDEM_CITUS_SOURCE)" >&2
    exit 1
  }
  echo "building Citus $version into Postgres 15" >&2
  build=$(mktemp -d)
  tar xzf "$source_dir/citus-$version.tar.gz" -C "$build"
  (
    cd "$build/citus-$version"
    # Debian's Postgres 15 exports have_createdb_privilege(), which Citus also
    # defines for 15; the patch drops Citus's copy. Older minor releases do not
    # export it: then the source builds as it is.
    if grep -q have_createdb_privilege /usr/include/postgresql/15/server/commands/dbcommands.h; then
      patch -p1 <"$source_dir/pg15-have-createdb-privilege.patch" >/dev/null
    fi
    ./configure --without-libcurl PG_CONFIG="$pg_config" >/dev/null
    make -j"$(nproc)" >/dev/null
    make install >/dev/null
  )
  rm -rf "$build"
fi

psql_at() { # $1: port; the rest: psql arguments
  local port=$1
  shift
  PGOPTIONS="-c client_min_messages=warning" \
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "${db:-postgres}" "$@"
}

for port in "$coordinator" "${workers[@]}"; do
  name="citus$port"
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$name"; then
    pg_createcluster 15 "$name" -p "$port" -- --auth=trust >/dev/null
    conf="/etc/postgresql/15/$name/postgresql.conf"
    {
      echo "shared_preload_libraries = 'citus'"
      echo "max_prepared_transactions = 200"
      echo "max_connections = 400"
      # Citus runs a maintenance daemon (deadlock detection, two-phase commit
      # recovery) per database: room for the test databases of a parallel run.
      echo "max_worker_processes = 64"
      echo "listen_addresses = '127.0.0.1'"
    } >>"$conf"
  fi
  if ! pg_lsclusters -h | awk -v n="$name" '$2 == n {print $4}' | grep -qx online; then
    pg_ctlcluster 15 "$name" start
  fi
  for _ in $(seq 1 30); do
    psql_at "$port" -c 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.5
  done
  # Clusters made before a setting was added get it too (it takes a restart).
  if [ "$(psql_at "$port" -tAc 'SHOW max_worker_processes')" -lt 64 ]; then
    psql_at "$port" -c 'ALTER SYSTEM SET max_worker_processes = 64' >/dev/null
    pg_ctlcluster 15 "$name" restart
    for _ in $(seq 1 30); do
      psql_at "$port" -c 'SELECT 1' >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
  psql_at "$port" -c 'CREATE EXTENSION IF NOT EXISTS citus' >/dev/null
done

psql_at "$coordinator" -c "SELECT citus_set_coordinator_host('127.0.0.1', $coordinator)" >/dev/null
for port in "${workers[@]}"; do
  known=$(psql_at "$coordinator" -tAc "SELECT count(*) FROM pg_dist_node WHERE nodeport = $port")
  if [ "$known" = 0 ]; then
    psql_at "$coordinator" -c "SELECT citus_add_node('127.0.0.1', $port)" >/dev/null
  fi
done
if [ -z "$database" ]; then
  echo "postgres://postgres@127.0.0.1:$coordinator/postgres"
  exit 0
fi
for port in "$coordinator" "${workers[@]}"; do
  psql_at "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null
  psql_at "$port" -c "CREATE DATABASE $database" >/dev/null
  db="$database" psql_at "$port" -c 'CREATE EXTENSION citus' >/dev/null
done
db="$database" psql_at "$coordinator" -c "SELECT citus_set_coordinator_host('127.0.0.1', $coordinator)" >/dev/null
for port in "${workers[@]}"; do
  db="$database" psql_at "$coordinator" -c "SELECT citus_add_node('127.0.0.1', $port)" >/dev/null
done
echo "postgres://postgres@127.0.0.1:$coordinator/$database"
