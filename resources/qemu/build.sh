#!/usr/bin/env bash
# Build L0's QEMU for the bed: Debian's qemu 10.0.2 source (the release
# bookworm-backports ships as a binary) with the patches in this folder, an
# x86_64-softmmu-only build with TCG, KVM and the user network (slirp).
#
# Why not the packaged binary: QEMU 10.0's TCG loses interrupt requests when
# an SVM guest (L1's KVM running L2) enters or leaves while a timer or IPI is
# raised (atomic-interrupt-request.patch says how; docs/test-bed.md, "Known
# hangs", what it looked like). The fix is upstream only from 10.2 on.
#
# Output: ${PASSVM_CACHE}/qemu-<hash>/bin/qemu-system-x86_64 (the build's
# binary alone: it finds the firmware through --firmwarepath); the hash covers
# this script, the patches, the source tarball's checksum and the installed
# build dependencies' versions, so a change to any of them builds anew and a
# cached build is reused as is. Prints the binary's path on stdout.
#
# Firmware (SeaBIOS, the option ROMs) comes from the installed qemu-system-data
# and seabios packages: Debian's source tarball carries no prebuilt ROMs.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

# The upstream tarball Debian repacks (+ds: prebuilt ROMs removed). Every
# Debian revision of 10.0.2 shares it, so any suite that still serves one of
# them will do; the checksum pins the bytes.
ORIG=qemu_10.0.2+ds.orig.tar.xz
ORIG_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1
VERSIONS=("1:10.0.2+ds-2+deb13u1~bpo12+1" "1:10.0.2+ds-2+deb13u1")
# Source indexes only, in a private list: nothing here touches the machine's
# apt sources (never trixie there), and binaries are not looked at.
SUITES=("http://deb.debian.org/debian bookworm-backports" "http://deb.debian.org/debian trixie")
FIRMWARE_PATH=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu

here="$BED_RESOURCES/qemu"
patches=("$here"/*.patch)
deps=""
for p in meson python3-pycotap ninja-build gcc libglib2.0-dev libpixman-1-dev libslirp-dev zlib1g-dev; do
    v="$(bed_pkg_version "$p")"
    [ -n "$v" ] || bed_die "$p is not installed: run resources/setup.sh"
    deps+=" $p=$v"
done
HASH="$(bed_hash "$here/build.sh" "${patches[@]}" -- "$ORIG_SHA256" "$deps")"
OUT="$PASSVM_CACHE/qemu-$HASH"
BIN="$OUT/bin/qemu-system-x86_64"
# The stamp is written last: an interrupted build is never taken for a done one.
if [ -f "$OUT/.complete" ] && [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

DL="$PASSVM_CACHE/qemu-source"
mkdir -p "$DL"
tarball="$DL/$ORIG"
if ! echo "$ORIG_SHA256  $tarball" | sha256sum -c --quiet 2>/dev/null; then
    bed_log "fetching Debian's $ORIG (apt-get source, private source list)"
    apt_dir="$DL/apt"
    mkdir -p "$apt_dir/lists/partial"
    : >"$apt_dir/sources.list"
    for s in "${SUITES[@]}"; do
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $s main" >>"$apt_dir/sources.list"
    done
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
    apt-get -q "${apt_opts[@]}" update >&2 || bed_die "apt-get update of the private source list failed"
    rm -f "$tarball"
    for v in "${VERSIONS[@]}"; do
        # --tar-only: the .dsc and Debian's packaging are not needed (and a
        # mirror may already have dropped them for a superseded revision).
        (cd "$DL" && apt-get -q "${apt_opts[@]}" source --download-only --tar-only "qemu=$v" >&2) && [ -f "$tarball" ] && break
    done
    [ -f "$tarball" ] || bed_die "no suite serves $ORIG any more (tried ${VERSIONS[*]}): update VERSIONS and ORIG in $0"
    echo "$ORIG_SHA256  $tarball" | sha256sum -c --quiet ||
        bed_die "$tarball does not have the expected checksum $ORIG_SHA256"
fi

BUILD="$OUT.build"
rm -rf "$BUILD" "$OUT"
mkdir -p "$BUILD"
bed_log "unpacking $ORIG"
tar -xJf "$tarball" -C "$BUILD" --strip-components=1
for p in "${patches[@]}"; do
    bed_log "applying $(basename "$p")"
    patch -d "$BUILD" -p1 --quiet --forward <"$p" || bed_die "$(basename "$p") does not apply to $ORIG"
done

bed_log "building qemu-$HASH (x86_64-softmmu, $(nproc) jobs; several minutes)"
mkdir -p "$BUILD/build"
(
    cd "$BUILD/build"
    # Only what the bed runs: no display, audio, block drivers beyond raw
    # files, or tools. --disable-download: subprojects come from the tarball.
    # The system python: Debian's meson is installed for it, and a pyenv
    # python first on PATH would not find it.
    ../configure --python=/usr/bin/python3 --firmwarepath="$FIRMWARE_PATH" \
        --target-list=x86_64-softmmu --without-default-features --disable-download \
        --enable-tcg --enable-kvm --enable-slirp --enable-pixman --disable-docs \
        --disable-tools --disable-install-blobs --disable-werror >"$BUILD/configure.log" 2>&1 ||
        { tail -n 30 "$BUILD/configure.log" >&2; exit 1; }
    # The emulator alone: `make` would also build the unit and softfloat
    # tests, a good part of the objects. Nothing is installed: the binary
    # finds its firmware through --firmwarepath.
    ninja -j"$(nproc)" qemu-system-x86_64 >"$BUILD/make.log" 2>&1 || { tail -n 30 "$BUILD/make.log" >&2; exit 1; }
) || bed_die "the QEMU build failed; logs in $BUILD"
mkdir -p "$OUT/bin"
cp "$BUILD/build/qemu-system-x86_64" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
"$BIN" --version >/dev/null || bed_die "the built $BIN does not run"
rm -rf "$BUILD"
touch "$OUT/.complete"
echo "$BIN"
