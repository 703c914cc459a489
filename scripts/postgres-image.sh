#!/usr/bin/env bash
# Builds a local Postgres image that behaves like the official one, for machines that
# reach no container registry. Idempotent: does nothing when the image already exists.
#
# Usage: scripts/postgres-image.sh [name:tag]   (default idem-postgres:15)
set -euo pipefail

image="${1:-idem-postgres:15}"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "postgres image $image already present"
  exit 0
fi

# Take the Debian mirror from this machine's own apt configuration.
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "no Debian mirror found in the apt configuration" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

echo "debootstrapping a minimal Debian with postgresql-15 (mirror from apt sources)"
debootstrap --variant=minbase --include=postgresql-15 bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 40 "$work/debootstrap.log" >&2
  exit 1
}

cat >"$rootfs/usr/local/bin/docker-entrypoint.sh" <<'ENTRY'
#!/bin/bash
# Mirrors the official postgres image's entrypoint for the parts tests rely on:
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_HOST_AUTH_METHOD; initdb on
# first start; then exec postgres with the given arguments on all addresses.
set -euo pipefail
BIN=/usr/lib/postgresql/15/bin
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

case "${1:-}" in
  -*) set -- postgres "$@" ;;
esac
if [ "${1:-}" != "postgres" ]; then
  exec "$@"
fi
shift

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-$user}"
  auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  pwargs=()
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    pwargs=(--pwfile="$pwfile")
  fi
  as_pg "$BIN/initdb" -D "$PGDATA" -U "$user" -E UTF8 --locale=C --auth-local=trust "${pwargs[@]}" >/dev/null
  [ -n "${pwfile:-}" ] && rm -f "$pwfile"
  echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != "postgres" ]; then
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    as_pg psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    as_pg "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "PostgreSQL init process complete; ready for start up."
  echo "database system is ready to accept connections"
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
ENTRY
chmod 755 "$rootfs/usr/local/bin/docker-entrypoint.sh"

# The package's own cluster is not used; keep the image small.
rm -rf "$rootfs/var/lib/postgresql/15" "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*

echo "importing $image"
tar -C "$rootfs" -c . | docker import \
  -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV PGDATA=/var/lib/postgresql/data' \
  -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  -c 'CMD ["postgres"]' \
  -c 'EXPOSE 5432' \
  - "$image" >/dev/null
echo "postgres image $image built"
