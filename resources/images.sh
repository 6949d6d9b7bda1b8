#!/usr/bin/env bash
# Build the initramfs images (busybox-static + cpio + gzip):
#   l2.cpio.gz           L2's init and checks (resources/l2)
#   l1-own.cpio.gz       L1 for the bed kernel: init, scenario library and
#                        scenarios, static passvm, L2's kernel and initramfs,
#                        Debian's udev (l1/udev.sh) and a static VFIO client
#   l1-debian.cpio.gz    the same plus the Debian kernel's modules (a second
#                        cpio appended: the kernel unpacks concatenated archives)
# Each image is rebuilt only when the hash of its inputs changes.
# Usage: images.sh KERNEL_DIR DEBIAN_DIR PASSVM_BINARY   (prints KEY=path lines)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

KERNEL_DIR="$1" DEBIAN_DIR="$2" PASSVM_BIN="$3"
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] && "$BUSYBOX" --help >/dev/null 2>&1 || bed_die "busybox-static missing: run resources/setup.sh"
IMAGES="$PASSVM_CACHE/images"
mkdir -p "$IMAGES"

# pack DIR OUT: a gzipped newc cpio of DIR, owned by root, written atomically.
pack() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$2.tmp"
    mv "$2.tmp" "$2"
}
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1.stamp" 2>/dev/null)" = "$2" ]; }
busybox_base() {
    mkdir -p "$1"/{bin,dev,proc,sys,tmp,etc,root}
    cp "$BUSYBOX" "$1/bin/busybox"
    ln -s busybox "$1/bin/sh"
}

# --- L2 ---------------------------------------------------------------------
L2="$IMAGES/l2.cpio.gz"
l2_hash="$(bed_hash "$BUSYBOX" "$BED_RESOURCES/images.sh" "$BED_RESOURCES/l2/init" "$BED_RESOURCES/l2/lib.sh" \
    "$BED_RESOURCES/lib/read-bench.sh" "$BED_RESOURCES/lib/pci-caps.sh" "$BED_RESOURCES"/l2/checks/*.sh --)"
if ! stamp_ok "$L2" "$l2_hash"; then
    bed_log "building L2 initramfs"
    stage="$(mktemp -d)"
    busybox_base "$stage"
    mkdir -p "$stage/lib" "$stage/checks"
    install -m 755 "$BED_RESOURCES/l2/init" "$stage/init"
    cat "$BED_RESOURCES/l2/lib.sh" "$BED_RESOURCES/lib/read-bench.sh" "$BED_RESOURCES/lib/pci-caps.sh" >"$stage/lib/bed-l2.sh"
    cp "$BED_RESOURCES"/l2/checks/*.sh "$stage/checks/"
    pack "$stage" "$L2"
    rm -rf "$stage"
    echo "$l2_hash" >"$L2.stamp"
fi

# --- L1 (bed kernel) ----------------------------------------------------------
# A real udev for the udev-links scenario: Debian's udevadm (systemd-udevd is the
# same binary) with the libraries it links, copied from this host at the paths
# ldd finds them, and a static VFIO client that is not passvm (l1/vfio-open.c).
UDEV_ROOT="$("$BED_RESOURCES/l1/udev.sh")/root" || bed_die "fetching udev for L1 failed"
UDEVADM="$UDEV_ROOT/bin/udevadm"
udev_libs="$(ldd "$UDEVADM" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')"
if ldd "$UDEVADM" | grep -q 'not found'; then
    bed_die "udevadm needs libraries this host lacks: $(ldd "$UDEVADM" | grep 'not found' | tr -s ' \t\n' ' ')"
fi
L1="$IMAGES/l1-own.cpio.gz"
# shellcheck disable=SC2086 # udev_libs is a word list of paths
l1_hash="$(bed_hash "$BUSYBOX" "$BED_RESOURCES/images.sh" "$BED_RESOURCES/l1/init" "$BED_RESOURCES/l1/lib.sh" \
    "$BED_RESOURCES/lib/read-bench.sh" "$BED_RESOURCES/lib/pci-caps.sh" "$BED_RESOURCES"/scenarios/*.sh "$PASSVM_BIN" \
    "$BED_RESOURCES/l1/vfio-open.c" "$UDEVADM" $udev_libs -- "$KERNEL_DIR" "$l2_hash")"
if ! stamp_ok "$L1" "$l1_hash"; then
    bed_log "building L1 initramfs"
    stage="$(mktemp -d)"
    busybox_base "$stage"
    mkdir -p "$stage/bed/scenarios" "$stage/bed/l2"
    install -m 755 "$BED_RESOURCES/l1/init" "$stage/init"
    cat "$BED_RESOURCES/l1/lib.sh" "$BED_RESOURCES/lib/read-bench.sh" "$BED_RESOURCES/lib/pci-caps.sh" >"$stage/bed/lib.sh"
    cp "$BED_RESOURCES"/scenarios/*.sh "$stage/bed/scenarios/"
    install -m 755 "$PASSVM_BIN" "$stage/bin/passvm"
    gcc -static -O2 -Wall -Wextra -Werror -o "$stage/bin/vfio-open" "$BED_RESOURCES/l1/vfio-open.c" ||
        bed_die "cannot build l1/vfio-open.c (gcc and libc6-dev: resources/setup.sh)"
    install -m 755 "$UDEVADM" "$stage/bin/udevadm"
    mkdir -p "$stage/lib/systemd" "$stage/etc/udev/rules.d"
    ln -s /bin/udevadm "$stage/lib/systemd/systemd-udevd"
    for f in $udev_libs; do
        mkdir -p "$stage$(dirname "$f")"
        cp -L "$f" "$stage$f"
    done
    cp "$KERNEL_DIR/vmlinux" "$KERNEL_DIR/bzImage" "$stage/bed/l2/"
    # L1 and L2 run this kernel, built without kallsyms: the text symbols let
    # L1's trace dump name the hrtimer functions (bed_trace_dump).
    nm "$KERNEL_DIR/vmlinux" | awk '$2 ~ /^[tT]$/ { print $1, $3 }' >"$stage/bed/l2/System.map"
    cp "$L2" "$stage/bed/l2/initrd.cpio.gz"
    pack "$stage" "$L1"
    rm -rf "$stage"
    echo "$l1_hash" >"$L1.stamp"
fi

# --- L1 (Debian kernel) -----------------------------------------------------
L1D="$IMAGES/l1-debian.cpio.gz"
l1d_hash="$(bed_hash -- "$l1_hash" "$DEBIAN_DIR")"
if ! stamp_ok "$L1D" "$l1d_hash"; then
    bed_log "building L1 initramfs for the Debian kernel"
    stage="$(mktemp -d)"
    mkdir -p "$stage/lib/modules/bed"
    cp "$DEBIAN_DIR"/modules/*.ko "$DEBIAN_DIR/modules/order" "$stage/lib/modules/bed/"
    pack "$stage" "$IMAGES/modules.cpio.gz"
    rm -rf "$stage"
    cat "$L1" "$IMAGES/modules.cpio.gz" >"$L1D.tmp"
    mv "$L1D.tmp" "$L1D"
    echo "$l1d_hash" >"$L1D.stamp"
fi

printf 'BED_L2_INITRD=%s\nBED_L1_OWN_INITRD=%s\nBED_L1_DEBIAN_INITRD=%s\n' "$L2" "$L1" "$L1D"
