#!/usr/bin/env bash
# Make sure a Docker engine answers, for `make images-offline` and `make e2e-docker` on a machine
# without one (such as this project's development machines).
#
#   images/docker-engine.sh
#
# Does nothing when `docker info` already succeeds (Docker Desktop, a system service, a remote
# DOCKER_HOST). Otherwise, as root: installs Debian's docker.io package when dockerd is missing, then
# starts dockerd in the offline configuration (no bridge network, no iptables rules: containers use
# `--network host` or `none`), logging to $DOCKERD_LOG, and waits until it answers.
#
# Environment: DOCKERD_LOG (default /var/log/autoft-dockerd.log), DOCKERD_WAIT_S (default 60).
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/autoft-dockerd.log}"
DOCKERD_WAIT_S="${DOCKERD_WAIT_S:-60}"

if docker info >/dev/null 2>&1; then
  echo "docker-engine: an engine answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "docker-engine: no Docker engine answers and starting one needs root." >&2
  echo "  Start Docker (e.g. 'sudo systemctl start docker'), or run this script as root." >&2
  exit 1
fi

if ! command -v dockerd >/dev/null; then
  command -v apt-get >/dev/null || {
    echo "docker-engine: dockerd is missing and apt-get is not available; install a Docker engine." >&2
    exit 1
  }
  echo ">> apt-get install docker.io"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
fi

echo ">> dockerd --bridge=none --iptables=false --ip-masq=false (log: $DOCKERD_LOG)"
# setsid: the daemon outlives this script and the make that ran it.
setsid dockerd --bridge=none --iptables=false --ip-masq=false >>"$DOCKERD_LOG" 2>&1 </dev/null &

for _ in $(seq "$DOCKERD_WAIT_S"); do
  if docker info >/dev/null 2>&1; then
    echo "docker-engine: dockerd $(docker info --format '{{.ServerVersion}}') is up"
    exit 0
  fi
  sleep 1
done
echo "docker-engine: dockerd did not answer within ${DOCKERD_WAIT_S} s; see $DOCKERD_LOG" >&2
tail -n 20 "$DOCKERD_LOG" >&2 || true
exit 1
