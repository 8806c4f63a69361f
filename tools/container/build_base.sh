#!/usr/bin/env bash
# Builds a Debian bookworm base image with debootstrap and imports it into podman, for
# machines that cannot pull python:3.11-slim-bookworm (no registry). Built once per
# machine: an image already in podman's storage is kept (FORCE=1 rebuilds it).
#
#   bash tools/container/build_base.sh            # prints the image name
#   MIRROR=http://... bash tools/container/build_base.sh localhost/x:y
#
# The base holds Debian's minimal system and nothing else; the Dockerfile installs
# python3 (Debian's 3.11 on bookworm) itself when its base has none. Needs root,
# debootstrap and podman (tools/container/containers.conf: runc, no default ulimits).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
image="${1:-localhost/tensorgate-base:bookworm}"
suite="${SUITE:-bookworm}"

if [ "${FORCE:-0}" != 1 ] && podman image exists "$image"; then
    echo "$image"
    exit 0
fi

# The Debian mirror apt already uses here (deb822 or one-line sources), else Debian's CDN.
mirror="${MIRROR:-}"
if [ -z "$mirror" ]; then
    mirror="$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list 2>/dev/null | head -n1 | tr -d ' ' || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
fi

command -v debootstrap >/dev/null || {
    echo "build_base: debootstrap is missing (apt-get install debootstrap)" >&2
    exit 1
}
root="$(mktemp -d "${TMPDIR:-/tmp}/tensorgate-base.XXXXXX")"
trap 'rm -rf "$root"' EXIT
echo "build_base: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -n 20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"
# Configured as Docker's official debian:bookworm-slim (the base of python:3.11-slim-
# bookworm): dpkg leaves documentation, manuals and translations out, and apt keeps no
# package caches, so images built on it stay as small as on the official one.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
DPKG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
find "$root/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/* \
    "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --quiet \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite $mirror" \
    - "$image" >/dev/null
echo "$image"
