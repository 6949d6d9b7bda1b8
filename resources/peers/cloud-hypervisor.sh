#!/usr/bin/env bash
# Build Cloud Hypervisor as a static binary for the bed (issue 12's side-by-side
# benchmark), cached in $PASSVM_CACHE/cloud-hypervisor-<hash> by the commits of
# both sources.
# Usage: cloud-hypervisor.sh CH_SOURCE MICRO_HTTP_SOURCE   (prints the binary's path)
#   each SOURCE is a git checkout or a bare git directory (e.g. what the tool
#   library's `fetch` brings: /work/.mirror/cloud-hypervisor+cloud-hypervisor/repo).
# Cloud Hypervisor takes micro_http from git (firecracker-microvm/micro-http), which
# no registry serves: the build points that dependency at the local source with a
# [patch] section, so it needs crates.io and nothing else.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"

[ $# -eq 2 ] || bed_die "usage: $0 CH_SOURCE MICRO_HTTP_SOURCE"
ch_src="$1" mh_src="$2"
rev() { git -C "$1" rev-parse HEAD 2>/dev/null || git --git-dir="$1" rev-parse HEAD; }
export_tree() { # GITDIR DEST
    mkdir -p "$2"
    if git -C "$1" rev-parse --is-bare-repository 2>/dev/null | grep -q true; then
        git --git-dir="$1" archive HEAD | tar -x -C "$2"
    else
        git -C "$1" archive HEAD | tar -x -C "$2"
    fi
}
ch_rev="$(rev "$ch_src")" || bed_die "$ch_src is not a git checkout of cloud-hypervisor"
mh_rev="$(rev "$mh_src")" || bed_die "$mh_src is not a git checkout of micro-http"
key="$(printf '%s %s %s\n' "$ch_rev" "$mh_rev" "$(rustc --version)" | sha256sum | cut -c1-16)"
out="$PASSVM_CACHE/cloud-hypervisor-$key"
bin="$out/cloud-hypervisor"
if [ ! -x "$bin" ]; then
    bed_log "building Cloud Hypervisor ${ch_rev:0:12} (micro-http ${mh_rev:0:12}) as a static binary: about 20 min on 2 cores"
    work="$out.build"
    rm -rf "$work"
    export_tree "$ch_src" "$work/cloud-hypervisor"
    export_tree "$mh_src" "$work/micro-http"
    mkdir -p "$work/cloud-hypervisor/.cargo"
    cat >>"$work/cloud-hypervisor/.cargo/config.toml" <<TOML

[patch."https://github.com/firecracker-microvm/micro-http"]
micro_http = { path = "$work/micro-http" }
TOML
    t0=$SECONDS
    (cd "$work/cloud-hypervisor" &&
        RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$work/target" \
            cargo build --release --target x86_64-unknown-linux-gnu --bin cloud-hypervisor) >&2 ||
        bed_die "the Cloud Hypervisor build failed (log above)"
    mkdir -p "$out"
    install -m 755 "$work/target/x86_64-unknown-linux-gnu/release/cloud-hypervisor" "$bin.tmp"
    mv "$bin.tmp" "$bin"
    echo "cloud-hypervisor $ch_rev micro-http $mh_rev built in $((SECONDS - t0)) s" >"$out/BUILD"
    rm -rf "$work"
fi
echo "$bin"
