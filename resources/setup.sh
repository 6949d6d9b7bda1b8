#!/usr/bin/env bash
# Host set-up for the nested test bed on Debian bookworm (amd64). Idempotent:
# on a machine that already has everything it only checks, without touching apt.
#
# - adds the bookworm-backports suite if no apt source names it (QEMU 10 comes
#   from there; bookworm's QEMU 7.2 is not what the bed was verified with).
#   Never trixie/sid/forky: pulling from those upgrades libc and dpkg under the
#   running system.
# - installs the kernel build tools, busybox-static/cpio for the images, what
#   L0's QEMU build needs, and qemu-system-x86 from bookworm-backports; `apt-get update` runs only when
#   a source was added or a package has no install candidate.
# - checks the Rust toolchain (cargo, clippy, rustfmt).
set -euo pipefail

# make, gcc and libc6-dev are usually there already (Rust needs a linker); the
# kernel build needs them too. The second line is what L0's QEMU build
# (resources/qemu/build.sh) needs besides them; acpica-tools is iasl, which the
# ACPI unit tests disassemble the DSDT with. The third: the libraries Debian's udevadm
# links, which L1's image copies from this host (resources/l1/udev.sh; usually there).
PACKAGES=(make gcc libc6-dev bison flex libelf-dev bc cpio busybox-static xz-utils zstd linux-source-6.12
    ninja-build pkg-config python3-venv libglib2.0-dev libpixman-1-dev libslirp-dev zlib1g-dev
    acpica-tools
    libkmod2 libacl1 libblkid1 libcap2 libselinux1)
# qemu-system-x86: the packaged QEMU (the built one's firmware, and the one to
# compare it with); meson >= 1.5 and pycotap for building QEMU 10.
BACKPORTS_PACKAGES=(qemu-system-x86 meson python3-pycotap)
BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "run as root (or install sudo): apt packages are needed"
    SUDO=(sudo)
fi

. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] ||
    die "this bed is set up for Debian bookworm (found ${PRETTY_NAME:-unknown}); install the packages by hand: ${PACKAGES[*]} and QEMU >= 10"

installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
has_candidate() {
    local c
    c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    [ -n "$c" ] && [ "$c" != "(none)" ]
}
# A backports package counts only when the backports build is the one installed.
installed_from_backports() { installed "$1" && dpkg-query -W -f='${Version}' "$1" | grep -q '~bpo12'; }

need_update=0
if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports to apt sources ($BACKPORTS_FILE)"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
        'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
        "${SUDO[@]}" tee "$BACKPORTS_FILE" >/dev/null
    need_update=1
fi

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
missing_bpo=()
for p in "${BACKPORTS_PACKAGES[@]}"; do installed_from_backports "$p" || missing_bpo+=("$p"); done

if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bpo[@]} -gt 0 ]; then
    for p in "${missing[@]}" "${missing_bpo[@]}"; do has_candidate "$p" || need_update=1; done
    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        if [ ${#missing[@]} -gt 0 ]; then
            "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" || return 1
        fi
        if [ ${#missing_bpo[@]} -gt 0 ]; then
            "${SUDO[@]}" apt-get install -y -q --no-install-recommends -t bookworm-backports "${missing_bpo[@]}" || return 1
        fi
    }
    if [ $need_update -eq 1 ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -q
        need_update=0
    fi
    log "installing: ${missing[*]} ${missing_bpo[*]:+(backports: ${missing_bpo[*]})}"
    # Stale lists can name versions the mirror has dropped: refresh once and retry.
    apt_install || { log "install failed; refreshing apt lists and retrying"; "${SUDO[@]}" apt-get update -q; apt_install; }
elif [ $need_update -eq 1 ]; then
    # Everything is installed, but the Debian L1 kernel is looked up in the lists.
    "${SUDO[@]}" apt-get update -q
fi

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs), then rerun"
if command -v rustup >/dev/null; then
    for c in clippy rustfmt; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi
log "host ready: $(qemu-system-x86_64 --version | head -n 1)"
