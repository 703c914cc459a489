#!/usr/bin/env bash
# Installs and starts what the tests need, idempotently: a Docker engine and the local
# Postgres image (idem-postgres:15) that IDEM_PG_IMAGE / IDEM_TEST_PG_IMAGE can name.
# Needs root (apt-get, dockerd). Usage: scripts/services.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  log="${TMPDIR:-/tmp}/idem-dockerd.log"
  nohup dockerd >"$log" 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -n 40 "$log" >&2; echo "dockerd did not start" >&2; exit 1; }
fi

"$here/postgres-image.sh" "${1:-idem-postgres:15}"
