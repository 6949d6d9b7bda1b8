#!/usr/bin/env bash
# The L1 image for the side-by-side benchmark (bed.sh bench --peers): the bed's own
# L1 image with the peers appended as a second cpio (the kernel unpacks concatenated
# archives):
#   - QEMU: this host's qemu-system-x86_64 (what a user of the bed host runs), with
#     every shared library it links at the same path, and its firmware directories
#     (SeaBIOS, option ROMs), so it runs in L1 unchanged;
#   - Cloud Hypervisor, when a binary is given (resources/peers/cloud-hypervisor.sh
#     builds a static one), as /bed/peers/cloud-hypervisor.
# Rebuilt only when the hash of its inputs changes.
# Usage: image.sh L1_OWN_INITRD [CLOUD_HYPERVISOR_BINARY]   (prints BED_L1_PEERS_INITRD=path)
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

l1="$1" ch="${2:-}"
qemu="$(command -v qemu-system-x86_64)" || bed_die "no qemu-system-x86_64 on this host: run resources/setup.sh"
[ -z "$ch" ] || [ -x "$ch" ] || bed_die "$ch is not an executable Cloud Hypervisor binary"
IMAGES="$PASSVM_CACHE/images"
mkdir -p "$IMAGES"
out="$IMAGES/l1-peers.cpio.gz"
libs="$(ldd "$qemu" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')"
firmware=(/usr/share/qemu /usr/share/seabios)
hash="$(bed_hash "$0" "$l1" "$qemu" $libs ${ch:+"$ch"} -- "${firmware[@]}")"
if [ ! -f "$out" ] || [ "$(cat "$out.stamp" 2>/dev/null)" != "$hash" ]; then
    bed_log "building the L1 image with the peers (QEMU $("$qemu" --version | head -n 1 | awk '{print $4}')${ch:+, Cloud Hypervisor})"
    stage="$(mktemp -d)"
    mkdir -p "$stage/bed/peers"
    cp -L "$qemu" "$stage/bed/peers/qemu-system-x86_64"
    for f in $libs; do
        mkdir -p "$stage$(dirname "$f")"
        cp -L "$f" "$stage$f"
    done
    for d in "${firmware[@]}"; do
        [ -d "$d" ] || continue
        mkdir -p "$stage$d"
        cp -rL "$d/." "$stage$d/"
    done
    [ -z "$ch" ] || install -m 755 "$ch" "$stage/bed/peers/cloud-hypervisor"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
        gzip -6 >"$IMAGES/peers.cpio.gz"
    rm -rf "$stage"
    cat "$l1" "$IMAGES/peers.cpio.gz" >"$out.tmp"
    mv "$out.tmp" "$out"
    echo "$hash" >"$out.stamp"
fi
echo "BED_L1_PEERS_INITRD=$out"
