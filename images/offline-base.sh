#!/usr/bin/env bash
# Build a Python 3.11 base image WITHOUT an image registry, for machines that reach Debian's package
# mirror but not Docker Hub (the Dockerfiles' default base is python:3.11-slim-bookworm, pulled from a
# registry; this script is the air-gapped stand-in).
#
#   images/offline-base.sh [TAG]          default TAG: autoft-python-base:3.11-bookworm
#
# What it does: debootstrap a minimal Debian bookworm root file system (variant minbase), add Debian's
# python3.11 + venv support + CA certificates, apply bookworm-security/-updates, strip docs and apt
# lists, then `docker import` the tree as an image. Debian's python lives at /usr/bin/python3 (the
# official python image has its own build under /usr/local/bin); the Dockerfiles only call `python3`,
# so either base works.
#
# Needs: root, a running docker daemon (images/docker-engine.sh), and a Debian mirror (MIRROR=...);
# installs debootstrap with apt-get when it is missing.
# Environment: MIRROR (default http://deb.debian.org/debian), SECURITY_MIRROR
# (default http://deb.debian.org/debian-security), KEEP_ROOTFS=1 to keep the unpacked tree.
set -euo pipefail

TAG="${1:-autoft-python-base:3.11-bookworm}"
SUITE=bookworm
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PACKAGES=python3.11,python3.11-venv,python3-venv,ca-certificates,netbase,tzdata

if [[ $(id -u) -ne 0 ]]; then
  echo "offline-base.sh: debootstrap needs root" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null; then
  command -v apt-get >/dev/null || { echo "offline-base.sh: install debootstrap" >&2; exit 1; }
  echo ">> apt-get install debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
fi
docker info >/dev/null 2>&1 || { echo "offline-base.sh: no docker daemon reachable" >&2; exit 1; }

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/autoft-rootfs.XXXXXX")"
cleanup() {
  if [[ "${KEEP_ROOTFS:-0}" != 1 ]]; then
    rm -rf --one-file-system "$ROOTFS"
  else
    echo "kept $ROOTFS"
  fi
}
trap cleanup EXIT

echo ">> debootstrap $SUITE ($MIRROR) into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR"

cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF

echo ">> security and point-release updates"
# /proc is not mounted: apt and dpkg do not need it for an upgrade of these packages.
# APT::Sandbox::User=root: the _apt sandbox user cannot write to the chroot's download directory.
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -qq -o APT::Sandbox::User=root update
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -qq -o APT::Sandbox::User=root -y upgrade
chroot "$ROOTFS" apt-get clean

echo ">> trimming"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/* \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/usr/share/locale/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
# Same convention as the official images: a container gets a fresh machine-id, not the build host's.
: >"$ROOTFS/etc/machine-id"

PY_VERSION="$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')"
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo ">> docker import $TAG (python $PY_VERSION)"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.opencontainers.image.title=autoft-python-base" \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + python $PY_VERSION (debootstrap; offline stand-in for python:3.11-slim-bookworm)\"" \
  --change "LABEL org.opencontainers.image.base.name=debian:$SUITE" \
  --change "LABEL org.opencontainers.image.created=$CREATED" \
  --message "debootstrap --variant=minbase $SUITE + $PACKAGES" \
  - "$TAG"

docker image ls "$TAG"
