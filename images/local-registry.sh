#!/usr/bin/env bash
# Make sure an image registry answers on loopback, for `make e2e-cluster` and for trying `make release`
# without a cloud registry.
#
#   images/local-registry.sh [PORT]        (default 5000; prints the registry's address)
#
# Does nothing when http://127.0.0.1:PORT/v2/ already answers. Otherwise starts Debian's `docker-registry`
# (the CNCF distribution registry), installing the package first when missing (root), storing images under
# $REGISTRY_DIR and logging to $REGISTRY_LOG. Docker treats 127.0.0.0/8 registries as insecure by default, so
# it pushes there over plain HTTP without any daemon configuration.
set -euo pipefail

PORT="${1:-5000}"
REGISTRY_DIR="${REGISTRY_DIR:-/var/lib/autoft-registry}"
REGISTRY_LOG="${REGISTRY_LOG:-/var/log/autoft-registry.log}"
ADDRESS="127.0.0.1:${PORT}"

answers() { curl -fsS -o /dev/null "http://${ADDRESS}/v2/" 2>/dev/null; }

if answers; then
  echo "${ADDRESS}"
  exit 0
fi

if ! command -v docker-registry >/dev/null; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "local-registry: docker-registry is missing; install Debian's docker-registry package (as root)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null; }
fi

mkdir -p "${REGISTRY_DIR}"
config="${REGISTRY_DIR}/config-${PORT}.yml"
cat >"${config}" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: ${REGISTRY_DIR}/data
  delete:
    enabled: true
http:
  addr: ${ADDRESS}
YAML
# setsid: the registry outlives this script and the make that ran it.
setsid docker-registry serve "${config}" >>"${REGISTRY_LOG}" 2>&1 </dev/null &
for _ in $(seq 30); do
  if answers; then
    echo "${ADDRESS}"
    exit 0
  fi
  sleep 1
done
echo "local-registry: no answer on ${ADDRESS} within 30 s; see ${REGISTRY_LOG}" >&2
tail -n 20 "${REGISTRY_LOG}" >&2 || true
exit 1
