#!/usr/bin/env bash
# Installs and starts what the tests need, idempotently: a Docker engine, the local
# Postgres image (idem-postgres:15) that IDEM_PG_IMAGE / IDEM_TEST_PG_IMAGE can name,
# nats-server with JetStream on 127.0.0.1:4222, and Prometheus (its server and promtool)
# for the tests of the metrics, the alert rules and the dashboard, and a Citus cluster
# (scripts/citus.sh) for the Citus tests, and openapi-spec-validator (PyPI) for the test
# of the example's OpenAPI document.
# Needs root (apt-get, dockerd). Usage: scripts/services.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ "${#need[@]}" -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The OpenAPI 3.1 validator the example's document is checked with.
if ! python3 -c "import openapi_spec_validator" >/dev/null 2>&1; then
  echo "installing openapi-spec-validator"
  python3 -m pip install --quiet --disable-pip-version-check "openapi-spec-validator==0.9.0"
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

# NATS with JetStream on loopback, for the outbox relay's tests (IDEM_TEST_NATS_URL).
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
  echo "starting nats-server (JetStream) on 127.0.0.1:4222"
  store=$(mktemp -d)
  nohup nats-server -js -a 127.0.0.1 -p 4222 -sd "$store" >"${TMPDIR:-/tmp}/idem-nats.log" 2>&1 &
  for _ in $(seq 1 30); do
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
    sleep 0.5
  done
  (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null || { echo "nats-server did not start" >&2; exit 1; }
fi

# A Citus cluster (a coordinator on 127.0.0.1:5433, workers on 5434 and 5435), built
# from the Citus source beside the project, for the Citus tests (IDEM_TEST_CITUS_URL).
"$here/citus.sh" >/dev/null
