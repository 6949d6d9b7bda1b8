#!/usr/bin/env bash
# systemd-udevd and udevadm for L1 (the udev-links scenario: passvm's rule for
# /dev/vfio/<bus>/<name>, run by a real udev). Debian bookworm's `udev` package,
# fetched with `apt-get download` and unpacked with `dpkg-deb -x` into the cache;
# nothing is installed on this host. Its udevadm links no libsystemd-shared, only
# libraries every bookworm host has (libc, libkmod, libacl, libblkid, libcap,
# libselinux and theirs); images.sh copies them from this host with `ldd`, as
# resources/peers/image.sh does for QEMU.
#
# Output: ${PASSVM_CACHE}/udev-<version>-<hash>/root (the unpacked package).
# Prints the output directory on stdout. Offline, the newest cached unpack is used.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

version="$(apt-cache policy udev 2>/dev/null | awk '/Candidate:/ { print $2 }')"
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    cached="$(ls -d "$PASSVM_CACHE"/udev-*/root 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$cached" ] || bed_die "no udev package in the apt lists: run resources/setup.sh (it runs apt-get update)"
    dirname "$cached"
    exit 0
fi
OUT="$PASSVM_CACHE/udev-$version-$(bed_hash "$BED_RESOURCES/l1/udev.sh" -- "$version")"
if [ -x "$OUT/root/bin/udevadm" ]; then
    echo "$OUT"
    exit 0
fi
# apt-get download runs as the _apt user and writes into the current directory.
DEB_DIR="$(mktemp -d)"
trap 'rm -rf "$DEB_DIR"' EXIT
chmod 777 "$DEB_DIR"
bed_log "downloading udev $version (for L1; not installed here)"
(cd "$DEB_DIR" && apt-get download -q "udev=$version" >&2) ||
    bed_die "cannot download udev $version: refresh the apt lists (apt-get update) and rerun"
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
dpkg-deb -x "$DEB_DIR"/udev_*.deb "$OUT.tmp/root"
[ -x "$OUT.tmp/root/bin/udevadm" ] || bed_die "the udev package has no bin/udevadm"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$OUT"
