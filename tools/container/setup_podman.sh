#!/usr/bin/env bash
# Installs what the container test and tools/container/*.sh need on a Debian host:
# podman with the runc runtime (crun fails on hybrid-cgroup hosts), and debootstrap for
# the base image (no registry is reachable). Idempotent; needs root.
set -euo pipefail
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "podman, runc and debootstrap are installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "setup_podman: run as root to install ${missing[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q "${missing[@]}" >/dev/null
echo "installed ${missing[*]}"
