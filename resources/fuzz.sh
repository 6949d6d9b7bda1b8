#!/usr/bin/env bash
# Coverage-guided fuzzing of the device models and parsers (fuzz/, docs/reliability.md).
#   fuzz.sh ci           build the targets, replay each one's committed corpus and
#                        regression inputs, then fuzz it briefly (PASSVM_FUZZ_SECONDS,
#                        default 15 s); fails on any crash, panic or timeout
#   fuzz.sh long [RUNS]  RUNS inputs per target (default 1000000), one target at a
#                        time, nice'd; prints per target the inputs run, seconds,
#                        libFuzzer's final cov/ft and the corpus size, and writes the
#                        minimized corpus back to fuzz/corpus/TARGET (commit it)
# A target name after the mode (or PASSVM_FUZZ_TARGETS="a b") runs only those.
# Needs rustup and crates.io: the nightly toolchain is installed when missing (stable
# with RUSTC_BOOTSTRAP and no sanitizer when it cannot be), cargo-fuzz is built once
# into $PASSVM_CACHE/cargo-fuzz-VERSION, and the build lives in $PASSVM_CACHE so warm
# runs only fuzz. A crash's input is kept under $PASSVM_CACHE/fuzz/artifacts; copy it
# to fuzz/regressions/TARGET/ with the fix so every later run replays it.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

CARGO_FUZZ_VERSION=0.13.2
FUZZ_DIR="$BED_REPO/fuzz"
WORK="$PASSVM_CACHE/fuzz"

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() { printf '[fuzz] error: %s\n' "$*" >&2; exit 1; }

usage() { die "usage: $0 ci [TARGET...] | long [RUNS] [TARGET...]"; }
MODE="${1:-}"
[ $# -gt 0 ] && shift
RUNS=1000000
case "$MODE" in
ci) ;;
long)
    if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
        RUNS="$1"
        shift
    fi
    ;;
*) usage ;;
esac

command -v rustup >/dev/null || die "rustup is missing: install Rust with rustup (resources/setup.sh checks it)"

# Nightly gives the address sanitizer. Where it cannot be had (no network to the
# toolchain server), stable accepts cargo-fuzz's flags with RUSTC_BOOTSTRAP, without
# a sanitizer: the targets' own assertions and Rust's checks still fail the run.
TOOLCHAIN="${PASSVM_FUZZ_TOOLCHAIN:-nightly}"
SANITIZER=address
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    log "installing the $TOOLCHAIN toolchain"
    if ! rustup toolchain install "$TOOLCHAIN" --profile minimal >&2; then
        log "cannot install $TOOLCHAIN: fuzzing on stable (RUSTC_BOOTSTRAP=1, no sanitizer)"
        TOOLCHAIN=stable
    fi
fi
if [ "$TOOLCHAIN" = stable ]; then
    export RUSTC_BOOTSTRAP=1
    SANITIZER=none
fi

CARGO_FUZZ_ROOT="$PASSVM_CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION"
if [ ! -x "$CARGO_FUZZ_ROOT/bin/cargo-fuzz" ]; then
    log "building cargo-fuzz $CARGO_FUZZ_VERSION into $CARGO_FUZZ_ROOT"
    nice -n 10 cargo install --locked --version "$CARGO_FUZZ_VERSION" --root "$CARGO_FUZZ_ROOT.tmp" cargo-fuzz >&2
    rm -rf "$CARGO_FUZZ_ROOT"
    mv "$CARGO_FUZZ_ROOT.tmp" "$CARGO_FUZZ_ROOT"
fi
export PATH="$CARGO_FUZZ_ROOT/bin:$PATH"
export CARGO_TARGET_DIR="$PASSVM_CACHE/fuzz-target-$TOOLCHAIN"
fuzz() { (cd "$BED_REPO" && nice -n 10 cargo "+$TOOLCHAIN" fuzz "$@" --fuzz-dir "$FUZZ_DIR"); }

if [ $# -gt 0 ]; then
    TARGETS=("$@")
elif [ -n "${PASSVM_FUZZ_TARGETS:-}" ]; then
    read -r -a TARGETS <<<"$PASSVM_FUZZ_TARGETS"
else
    mapfile -t TARGETS < <(fuzz list)
fi
[ ${#TARGETS[@]} -gt 0 ] || die "no fuzz targets in $FUZZ_DIR"

t=$SECONDS
log "building the targets ($TOOLCHAIN, sanitizer $SANITIZER)"
fuzz build -s "$SANITIZER" >&2
log "built in $((SECONDS - t)) s"
BIN="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

# run TARGET LOG LIBFUZZER_ARGS...: one nice'd libFuzzer run over a scratch corpus
# (new inputs go there, never into the repository) seeded by the committed corpus
# and the regression inputs; prints the log's tail and the crash input on failure.
run() {
    local target="$1" logf="$2"
    shift 2
    local scratch="$WORK/scratch/$target" art="$WORK/artifacts"
    rm -rf "$scratch"
    mkdir -p "$scratch" "$art"
    local seeds=()
    for d in "$FUZZ_DIR/corpus/$target" "$FUZZ_DIR/regressions/$target"; do
        [ -d "$d" ] && seeds+=("$d")
    done
    if ! nice -n 10 "$BIN/$target" "$scratch" "${seeds[@]}" -artifact_prefix="$art/$target-" \
        -timeout=10 -print_final_stats=1 "$@" >"$logf" 2>&1; then
        tail -n 40 "$logf" >&2
        local crash
        crash="$(grep -o "Test unit written to .*" "$logf" | tail -n 1 | sed 's/Test unit written to //')"
        log "$target FAILED; input: ${crash:-none written}"
        [ -n "$crash" ] && log "reproduce: $BIN/$target $crash"
        return 1
    fi
}

# Replaces fuzz/corpus/TARGET with the smallest set of inputs that keeps every feature
# of the committed corpus and of the last run's scratch corpus. cargo fuzz cmin's
# -merge=1 keeps every input that adds a feature on the way (a thousand and more
# here); the set-cover merge keeps the same features in a few hundred.
minimize() {
    local target="$1" merged="$WORK/merged/$1" inputs=()
    for d in "$FUZZ_DIR/corpus/$target" "$WORK/scratch/$target"; do
        [ -d "$d" ] && inputs+=("$d")
    done
    rm -rf "$merged"
    mkdir -p "$merged"
    if nice -n 10 "$BIN/$target" -set_cover_merge=1 "$merged" "${inputs[@]}" \
        >"$WORK/logs/$target.merge.log" 2>&1 && [ -n "$(ls -A "$merged")" ]; then
        rm -rf "$FUZZ_DIR/corpus/$target"
        mkdir -p "$FUZZ_DIR/corpus/$target"
        cp "$merged"/* "$FUZZ_DIR/corpus/$target/"
    else
        log "$target: the merge failed (see $WORK/logs/$target.merge.log); corpus left as it was"
    fi
}

# What libFuzzer's last status line and summary say: runs seconds cov ft.
stats() {
    local logf="$1" runs secs cov ft
    runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$logf" | tail -n 1)"
    secs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$logf" | tail -n 1)"
    cov="$(grep -o 'cov: [0-9]*' "$logf" | tail -n 1 | cut -d' ' -f2)"
    ft="$(grep -o 'ft: [0-9]*' "$logf" | tail -n 1 | cut -d' ' -f2)"
    echo "${runs:-?} ${secs:-?} ${cov:-?} ${ft:-?}"
}

mkdir -p "$WORK/logs"
failed=()
case "$MODE" in
ci)
    for target in "${TARGETS[@]}"; do
        t=$SECONDS
        logf="$WORK/logs/$target.ci.log"
        if run "$target" "$logf" -max_total_time="${PASSVM_FUZZ_SECONDS:-15}"; then
            read -r runs _ cov ft <<<"$(stats "$logf")"
            log "$target: ok, $runs inputs in $((SECONDS - t)) s (cov $cov, ft $ft)"
        else
            failed+=("$target")
        fi
    done
    ;;
long)
    table=()
    for target in "${TARGETS[@]}"; do
        logf="$WORK/logs/$target.long.log"
        log "$target: $RUNS inputs"
        if ! run "$target" "$logf" -runs="$RUNS"; then
            failed+=("$target")
            continue
        fi
        minimize "$target"
        read -r runs secs cov ft <<<"$(stats "$logf")"
        files="$(find "$FUZZ_DIR/corpus/$target" -type f 2>/dev/null | wc -l)"
        table+=("$(printf '%-14s %10s %8s %7s %7s %8s' "$target" "$runs" "$secs" "$cov" "$ft" "$files")")
    done
    printf '%-14s %10s %8s %7s %7s %8s\n' target inputs seconds cov ft corpus
    printf '%s\n' "${table[@]}"
    ;;
esac

if [ ${#failed[@]} -gt 0 ]; then
    die "crashed: ${failed[*]} (logs in $WORK/logs)"
fi
log "all ${#TARGETS[@]} targets passed"
