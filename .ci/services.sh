#!/usr/bin/env bash
# Installs and starts what the tests need, idempotently: a Docker engine and the local
# Postgres image. Source it (`. .ci/services.sh`) to get IDEM_TEST_PG_IMAGE exported.
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

export IDEM_TEST_PG_IMAGE="${IDEM_TEST_PG_IMAGE:-idem-postgres:15}"
"$here/postgres-image.sh" "$IDEM_TEST_PG_IMAGE"
