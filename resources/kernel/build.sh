#!/usr/bin/env bash
# Build the bed's kernel (bzImage for L1, vmlinux for L2) from Debian's
# linux-source-6.12: tinyconfig + passvm.config + olddefconfig, no modules.
#
# Output: ${PASSVM_CACHE}/kernel-<hash>/{bzImage,vmlinux,config}; the hash
# covers the fragment, this script and the source package version, so a
# change to any of them builds a new kernel and a cached one is reused as is.
# Prints the output directory on stdout.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

FRAGMENT="$BED_RESOURCES/kernel/passvm.config"
TARBALL=/usr/src/linux-source-6.12.tar.xz
SRC_VERSION="$(bed_pkg_version linux-source-6.12)"
[ -n "$SRC_VERSION" ] && [ -f "$TARBALL" ] ||
    bed_die "linux-source-6.12 is not installed: run resources/setup.sh"

HASH="$(bed_hash "$FRAGMENT" "$BED_RESOURCES/kernel/build.sh" -- "$SRC_VERSION")"
OUT="$PASSVM_CACHE/kernel-$HASH"
if [ -f "$OUT/bzImage" ] && [ -f "$OUT/vmlinux" ]; then
    echo "$OUT"
    exit 0
fi

# One unpacked tree per source version, shared by every fragment's build
# (builds go out of tree with O=).
SRC="$PASSVM_CACHE/linux-source-$SRC_VERSION"
if [ ! -f "$SRC/.unpacked" ]; then
    bed_log "unpacking $TARBALL ($SRC_VERSION)"
    rm -rf "$SRC" "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    tar -xJf "$TARBALL" -C "$SRC.tmp" --strip-components=1
    touch "$SRC.tmp/.unpacked"
    mv "$SRC.tmp" "$SRC"
fi

BUILD="$OUT.build"
rm -rf "$BUILD"
mkdir -p "$BUILD"
MAKE=(make -C "$SRC" O="$BUILD" -j"$(nproc)" KBUILD_BUILD_USER=passvm KBUILD_BUILD_HOST=bed)

bed_log "configuring kernel-$HASH (tinyconfig + $(basename "$FRAGMENT"))"
"${MAKE[@]}" -s tinyconfig >/dev/null
"$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "$FRAGMENT" >/dev/null
"${MAKE[@]}" -s olddefconfig >/dev/null

# Kconfig drops an option silently when a dependency is missing; a bed that
# quietly lost VFIO_DEVICE_CDEV would test the wrong thing. Check every line.
lost=()
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*)
        grep -qxF "$line" "$BUILD/.config" || lost+=("$line (now: $(grep -E "^(# )?${line%%=*}[= ]" "$BUILD/.config" || echo absent))")
        ;;
    "# CONFIG_"*" is not set")
        opt="${line#\# }"; opt="${opt%% *}"
        grep -q "^$opt=" "$BUILD/.config" && lost+=("$line (now: $(grep "^$opt=" "$BUILD/.config"))")
        ;;
    esac
done <"$FRAGMENT"
if [ ${#lost[@]} -gt 0 ]; then
    printf '[bed] error: olddefconfig did not keep these fragment options (missing dependency?):\n' >&2
    printf '[bed]   %s\n' "${lost[@]}" >&2
    bed_die "fix $FRAGMENT (add the dependency) and rerun"
fi

bed_log "building kernel-$HASH with $(nproc) jobs (a few minutes)"
start=$SECONDS
"${MAKE[@]}" bzImage >"$BUILD/make.log" 2>&1 || {
    tail -n 40 "$BUILD/make.log" >&2
    bed_die "kernel build failed (full log: $BUILD/make.log)"
}
bed_log "kernel built in $((SECONDS - start)) s"

mkdir -p "$OUT.tmp"
cp "$BUILD/arch/x86/boot/bzImage" "$BUILD/vmlinux" "$OUT.tmp/"
cp "$BUILD/.config" "$OUT.tmp/config"
printf 'source %s\nfragment-hash %s\n' "$SRC_VERSION" "$HASH" >"$OUT.tmp/info"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
rm -rf "$BUILD"
echo "$OUT"
