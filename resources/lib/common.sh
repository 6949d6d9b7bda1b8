# Shared helpers for the host-side bed scripts (bash). Sourced, not run.

# The cache lives outside the repository so `git clean` and fresh clones keep
# the expensive artifacts (kernel builds, the Debian kernel).
PASSVM_CACHE="${PASSVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/passvm}"
BED_RESOURCES="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BED_REPO="$(cd "$BED_RESOURCES/.." && pwd)"

bed_log() { printf '[bed] %s\n' "$*" >&2; }
bed_die() { printf '[bed] error: %s\n' "$*" >&2; exit 1; }

# Short stable hash of files and extra strings: cache keys and image stamps.
# Usage: bed_hash FILE... -- STRING...
bed_hash() {
    {
        while [ $# -gt 0 ] && [ "$1" != "--" ]; do
            printf 'file %s\n' "${1#"$BED_REPO"/}"
            cat "$1"
            shift
        done
        [ "${1:-}" = "--" ] && shift
        printf 'extra %s\n' "$@"
    } | sha256sum | cut -c1-16
}

# Installed version of a Debian package, or empty.
bed_pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
