#!/usr/bin/env bash
# Fetch the legacy-only L1 kernel: Debian's packaged 6.12 (bookworm-security /
# bookworm-backports), which has VFIO groups but CONFIG_IOMMUFD off, so passvm's
# group fallback runs for real. Extracts vmlinuz plus the modules the group path
# needs, decompressed and in dependency order.
#
# Output: ${PASSVM_CACHE}/debian-<pkg version>-<hash>/{vmlinuz,modules/*.ko,modules/order}
# Prints the output directory on stdout.
# PASSVM_DEBIAN_KERNEL=<package name> picks a specific package.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

# Modules the legacy path needs; their dependencies are added from each
# module's own "depends=". virtio_pci/virtio_iommu are listed in case the
# package builds them as modules (then L1 has no IOMMU until they are loaded).
WANTED=(virtio_pci virtio_iommu kvm_amd vfio_pci vfio_iommu_type1)

# Sets PKG, VERSION and OUT from the apt lists.
pick() {
    PKG="${PASSVM_DEBIAN_KERNEL:-}"
    if [ -z "$PKG" ]; then
        PKG="$(apt-cache pkgnames linux-image-6.12 |
            grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | sort -V | tail -n 1)"
    fi
    [ -n "$PKG" ] || bed_die "no linux-image-6.12.*+deb12-amd64-unsigned in the apt lists: run resources/setup.sh"
    VERSION="$(apt-cache policy "$PKG" | awk '/Candidate:/ { print $2 }')"
    [ -n "$VERSION" ] && [ "$VERSION" != "(none)" ] || bed_die "$PKG has no installable candidate"
    local hash
    hash="$(bed_hash "$BED_RESOURCES/kernel/debian.sh" -- "$PKG" "$VERSION" "${WANTED[@]}")"
    OUT="$PASSVM_CACHE/debian-${PKG#linux-image-}-$hash"
}
cached() { [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/modules/order" ]; }

pick
if cached; then
    echo "$OUT"
    exit 0
fi

# apt-get download fetches as the _apt user into the current directory, which
# must be writable for it (the cache under /root is not).
DEB_DIR="$(mktemp -d)"
trap 'rm -rf "$DEB_DIR"' EXIT
chmod 777 "$DEB_DIR"
bed_log "downloading $PKG $VERSION"
if ! (cd "$DEB_DIR" && apt-get download -q "$PKG=$VERSION" >&2); then
    # Old lists name versions the mirror no longer has: refresh once, pick again.
    bed_log "download failed; refreshing the apt lists"
    SUDO=()
    [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -q >&2
    pick
    if cached; then
        echo "$OUT"
        exit 0
    fi
    bed_log "downloading $PKG $VERSION"
    (cd "$DEB_DIR" && apt-get download -q "$PKG=$VERSION" >&2) || bed_die "cannot download $PKG $VERSION"
fi

WORK="$OUT.tmp"
rm -rf "$WORK"
mkdir -p "$WORK/root" "$WORK/out/modules"
dpkg-deb -x "$DEB_DIR"/*.deb "$WORK/root"

KVER="$(ls "$WORK/root/lib/modules")"
MODDIR="$WORK/root/lib/modules/$KVER"
cp "$WORK/root/boot/vmlinuz-$KVER" "$WORK/out/vmlinuz"
cp "$WORK/root/boot/config-$KVER" "$WORK/out/config"
# Index every module file by name (dashes and underscores are the same name
# to the kernel). Dependencies come from each module's own .modinfo
# "depends=" entry, so no depmod (kmod) is needed on the host.
declare -A PATH_OF
while IFS= read -r path; do
    name="$(basename "$path")"; name="${name%%.ko*}"; name="${name//-/_}"
    PATH_OF[$name]="$path"
done < <(find "$MODDIR/kernel" -name '*.ko*')

unpack_module() {
    case "$1" in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko) cat "$1" ;;
    *) bed_die "unexpected module file $1" ;;
    esac
}
module_deps() {
    unpack_module "${PATH_OF[$1]}" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '
}

declare -A DONE
ORDER=()
load() {
    local name="${1//-/_}" dep
    [ -n "${DONE[$name]:-}" ] && return
    DONE[$name]=1
    [ -n "${PATH_OF[$name]:-}" ] || bed_die "$KVER has no module $name"
    for dep in $(module_deps "$name"); do
        load "$dep"
    done
    ORDER+=("$name")
}
builtin="$(cat "$MODDIR/modules.builtin")"
for m in "${WANTED[@]}"; do
    if [ -n "${PATH_OF[$m]:-}" ]; then
        load "$m"
    elif grep -q "/${m//_/[-_]}\.ko$" <<<"$builtin"; then
        bed_log "$m is built into $KVER"
    else
        bed_die "$KVER has no module $m"
    fi
done

for name in "${ORDER[@]}"; do
    # busybox insmod cannot decompress: ship plain .ko files.
    unpack_module "${PATH_OF[$name]}" >"$WORK/out/modules/$name.ko"
    echo "$name" >>"$WORK/out/modules/order"
done
printf 'package %s %s\nkernel %s\n' "$PKG" "$VERSION" "$KVER" >"$WORK/out/info"
bed_log "$KVER: modules in load order: ${ORDER[*]}"

rm -rf "$OUT"
mv "$WORK/out" "$OUT"
rm -rf "$WORK"
echo "$OUT"
