#!/usr/bin/env bash
# The nested test bed's entry point (docs/test-bed.md).
#
#   bed.sh setup       host packages (resources/setup.sh)
#   bed.sh prepare     kernel, Debian kernel, static passvm, images; prints KEY=path
#   bed.sh launch ...  boot L0 -> L1 and run one scenario (artifacts from the last prepare)
#   bed.sh run ...     prepare, then launch
#   bed.sh demo        setup + run the demo scenario (passvm passes a disk to L2)
#   bed.sh test        setup + fmt + clippy + unit tests + every nested scenario
#   bed.sh bench       setup + the nested benchmarks (boot time and RSS, DMA map
#                      time, disk throughput): figures printed, nothing asserted
#
# launch/run options:
#   --scenario NAME      resources/scenarios/NAME.sh (required)
#   --l1 own|debian      L1 kernel: the bed kernel (iommufd + cdev) or Debian's
#                        6.12 (VFIO groups only)                    [own]
#   --device SPEC        repeatable; NAMEs are how scenarios find them (bed_bdf NAME):
#                          blk:NAME        virtio-blk on the root bus, its own group, no reset
#                          blk-rp:NAME     virtio-blk behind a PCIe root port (FLR/PM/bus reset)
#                          blk-mf:NAME+NAME  two virtio-blk functions of one slot: one group
#                          e1000e:NAME     e1000e NIC (QEMU user network: 10.0.2.2 answers ping)
#                          edu:NAME        QEMU's edu device
#                        every blk NAME gets a disk image WORKDIR/NAME.img (16 MiB, raw)
#                        whose first sector reads "PASSVM-DISK name=NAME"
#   --workdir DIR        disk images go here                        [mktemp -d]
#   --timeout SECS       QEMU is stopped after this long, 0 for never [300]
#   --append ARGS        extra L1 kernel arguments (e.g. loglevel=7)
#   --memory MIB         L1 RAM                                     [3072]
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

ENV_FILE="$PASSVM_CACHE/bed.env"
DISK_MIB=16

cmd_setup() { "$BED_RESOURCES/setup.sh"; }

# Every step checks its status explicitly: this also runs inside `if` (the
# test stages), where `set -e` does not apply.
cmd_prepare() {
    mkdir -p "$PASSVM_CACHE" || return 1
    # Concurrent prepares (two test binaries, two developers) would race on
    # the same cache entries.
    exec 9>"$PASSVM_CACHE/prepare.lock" && flock 9 || return 1
    local kernel debian passvm images
    kernel="$("$BED_RESOURCES/kernel/build.sh")" || bed_die "the kernel build failed"
    debian="$("$BED_RESOURCES/kernel/debian.sh")" || bed_die "fetching the Debian kernel failed"
    bed_log "building static passvm (release)"
    (cd "$BED_REPO" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --quiet --release --target x86_64-unknown-linux-gnu --bin passvm) >&2 ||
        bed_die "the static passvm build failed (see above)"
    passvm="$BED_REPO/target/x86_64-unknown-linux-gnu/release/passvm"
    images="$("$BED_RESOURCES/images.sh" "$kernel" "$debian" "$passvm")" || bed_die "building the images failed"
    {
        echo "BED_KERNEL=$kernel/bzImage"
        echo "BED_VMLINUX=$kernel/vmlinux"
        echo "BED_DEBIAN_KERNEL=$debian/vmlinuz"
        echo "BED_PASSVM=$passvm"
        echo "$images"
    } >"$ENV_FILE.tmp" && mv "$ENV_FILE.tmp" "$ENV_FILE" || bed_die "cannot write $ENV_FILE"
    exec 9>&-
    cat "$ENV_FILE"
}

cmd_launch() {
    local scenario="" l1=own workdir="" timeout=300 append="" memory=3072
    local devices=()
    while [ $# -gt 0 ]; do
        case "$1" in
        --scenario) scenario="$2"; shift 2 ;;
        --l1) l1="$2"; shift 2 ;;
        --device) devices+=("$2"); shift 2 ;;
        --workdir) workdir="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --append) append="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        *) bed_die "unknown launch option '$1' (see the top of $0)" ;;
        esac
    done
    [ -n "$scenario" ] || bed_die "--scenario NAME is required"
    [ -f "$BED_RESOURCES/scenarios/$scenario.sh" ] ||
        bed_die "no scenario resources/scenarios/$scenario.sh"
    [ -f "$ENV_FILE" ] || bed_die "the bed is not prepared: run $0 prepare"
    . "$ENV_FILE"
    local kernel initrd
    case "$l1" in
    own) kernel="$BED_KERNEL" initrd="$BED_L1_OWN_INITRD" ;;
    debian) kernel="$BED_DEBIAN_KERNEL" initrd="$BED_L1_DEBIAN_INITRD" ;;
    *) bed_die "--l1 must be own or debian, not '$l1'" ;;
    esac
    [ -n "$workdir" ] || workdir="$(mktemp -d -t passvm-bed.XXXXXX)"
    mkdir -p "$workdir"

    # Fixed slots keep BDFs stable from run to run: root-bus devices from 0x10
    # up, in the order given; the N-th root port's endpoint is bus N.
    local qemu_dev=() map=() slot=16 port=0 spec kind names a b
    make_disk() {
        local img="$workdir/$1.img"
        rm -f "$img"
        truncate -s "${DISK_MIB}M" "$img"
        printf 'PASSVM-DISK name=%s\n' "$1" | dd of="$img" conv=notrunc status=none
        qemu_dev+=(-drive "if=none,id=drv-$1,file=$img,format=raw")
    }
    # iommu_platform=on: without it a virtio device bypasses the vIOMMU and its
    # DMA lands in the wrong place once L1 gives it to a guest.
    local blk="virtio-blk-pci,iommu_platform=on,disable-legacy=on"
    for spec in "${devices[@]}"; do
        kind="${spec%%:*}" names="${spec#*:}"
        [ "$kind" != "$spec" ] && [ -n "$names" ] || bed_die "bad --device '$spec' (KIND:NAME)"
        # Names become QEMU ids and L1 command-line words.
        [[ "$names" =~ ^[A-Za-z][A-Za-z0-9_-]*(\+[A-Za-z][A-Za-z0-9_-]*)?$ ]] ||
            bed_die "bad device name in '$spec': use a letter then letters, digits, _ or -"
        # Slot 0x1f belongs to q35's ICH9 functions.
        [ $slot -lt 31 ] || bed_die "too many devices: slots 0x10-0x1e are used up"
        case "$kind" in
        blk)
            make_disk "$names"
            qemu_dev+=(-device "$blk,drive=drv-$names,id=$names,addr=$(printf 0x%x $slot)")
            map+=("$names@0000:00:$(printf %02x $slot).0")
            slot=$((slot + 1))
            ;;
        blk-rp)
            port=$((port + 1))
            make_disk "$names"
            qemu_dev+=(-device "pcie-root-port,id=rp$port,chassis=$port,slot=$port,addr=$(printf 0x%x $slot)")
            qemu_dev+=(-device "$blk,drive=drv-$names,id=$names,bus=rp$port")
            map+=("$names@0000:$(printf %02x $port):00.0")
            slot=$((slot + 1))
            ;;
        blk-mf)
            a="${names%%+*}" b="${names#*+}"
            [ "$a" != "$names" ] || bed_die "blk-mf needs two names: blk-mf:NAME+NAME"
            make_disk "$a"
            make_disk "$b"
            # Functions of one slot share a group. Not a conventional PCI
            # bridge: its requester ID makes the virtio-iommu fault (test-bed.md).
            qemu_dev+=(-device "$blk,drive=drv-$a,id=$a,addr=$(printf 0x%x $slot).0,multifunction=on")
            qemu_dev+=(-device "$blk,drive=drv-$b,id=$b,addr=$(printf 0x%x $slot).1")
            map+=("$a@0000:00:$(printf %02x $slot).0" "$b@0000:00:$(printf %02x $slot).1")
            slot=$((slot + 1))
            ;;
        e1000e)
            qemu_dev+=(-netdev "user,id=net-$names" -device "e1000e,netdev=net-$names,id=$names,romfile=,addr=$(printf 0x%x $slot)")
            map+=("$names@0000:00:$(printf %02x $slot).0")
            slot=$((slot + 1))
            ;;
        edu)
            qemu_dev+=(-device "edu,id=$names,addr=$(printf 0x%x $slot)")
            map+=("$names@0000:00:$(printf %02x $slot).0")
            slot=$((slot + 1))
            ;;
        *) bed_die "unknown device kind '$kind' in '$spec' (blk, blk-rp, blk-mf, e1000e, edu)" ;;
        esac
    done
    local devmap
    devmap="$(IFS=,; echo "${map[*]}")"

    # Both allow_unsafe_interrupts: the virtio-iommu has no interrupt remapping,
    # and without them VFIO_SET_IOMMU / the iommufd bind fail with EPERM.
    local cmdline="console=ttyS0 panic=-1 quiet vfio_iommu_type1.allow_unsafe_interrupts=1"
    cmdline+=" iommufd.allow_unsafe_interrupts=1 passvm.scenario=$scenario"
    [ -n "$devmap" ] && cmdline+=" passvm.devices=$devmap"
    [ -n "$append" ] && cmdline+=" $append"

    local qemu=(qemu-system-x86_64 -M q35 -accel "${PASSVM_BED_ACCEL:-tcg}" -cpu max -smp 2 -m "$memory"
        -nographic -no-reboot -vga none -nic none
        -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
        -device virtio-iommu-pci,addr=0x2 "${qemu_dev[@]}")
    # One L0 takes both cores: runs wait for each other (the Rust API holds
    # the same lock itself and says so). QEMU inherits the descriptor, so the
    # lock lasts exactly as long as it runs.
    if [ -z "${PASSVM_BED_LOCKED:-}" ]; then
        exec 8>"${TMPDIR:-/tmp}/passvm-bed.lock"
        flock -n 8 || { bed_log "waiting for another bed run to finish"; flock 8; }
    fi
    bed_log "workdir $workdir"
    bed_log "$(printf '%q ' "${qemu[@]}")"
    # --timeout 0: the caller keeps the deadline (the Rust API: QEMU is then
    # this very process, which the API's parent-death signal reaches).
    [ "$timeout" = 0 ] && exec "${qemu[@]}"
    # --foreground keeps QEMU in the terminal's process group (an interactive
    # demo would stop on SIGTTIN otherwise).
    exec timeout --foreground -k 10 "$timeout" "${qemu[@]}"
}

cmd_run() {
    cmd_prepare_quiet
    cmd_launch "$@"
}

# The demo: the console goes to the terminal (and WORKDIR/serial.log); after
# L0 exits, show from this side what L2 wrote to the disk. The exit status is
# the scenario's (passvm's, for the demo scenario).
cmd_demo() {
    local workdir rc=0 written
    cmd_setup
    workdir="$(mktemp -d -t passvm-demo.XXXXXX)"
    (cmd_run --scenario demo --device blk:d0 --timeout 300 --workdir "$workdir" "$@") 2>&1 |
        tee "$workdir/serial.log" || rc=$?
    if [ $rc -eq 0 ]; then
        rc="$(tr -d '\r' <"$workdir/serial.log" | sed -n 's/^PASSVM-BED-RESULT .* rc=\([0-9]*\)$/\1/p' | tail -n 1)"
        rc="${rc:-1}"
    fi
    written="$(dd if="$workdir/d0.img" bs=512 skip=2048 count=1 status=none | tr -d '\0' | head -n 1)"
    bed_log "demo finished with status $rc; log: $workdir/serial.log"
    # A hang of the nested emulation (docs/test-bed.md, "Known hangs") is not passvm's:
    # say so, with what the hang probe saw, rather than leave a bare timeout.
    if [ "$rc" -ne 0 ] && grep -q -E "L1\| HANG |detected stalls on CPUs|BUG: soft lockup" "$workdir/serial.log"; then
        bed_log "L2 stopped making progress (the \"L1| HANG\" and \"vcpuN:\" lines above show where);"
        bed_log "the nested TCG emulation hangs a run now and then (docs/test-bed.md, \"Known hangs\"): run the demo again"
    fi
    bed_log "L0's disk image d0.img at 1 MiB: ${written:-(nothing written: L2 did not reach the disk)}"
    return "$rc"
}

# Every stage runs even when an earlier one failed, so one CI run shows every
# problem; the exit status is non-zero if any stage failed.
cmd_test() {
    local start=$SECONDS failed=() t
    stage() {
        local name="$1"
        shift
        bed_log "==> $name"
        t=$SECONDS
        if "$@"; then
            bed_log "<== $name: ok ($((SECONDS - t)) s)"
        else
            bed_log "<== $name: FAILED ($((SECONDS - t)) s)"
            failed+=("$name")
        fi
    }
    cmd_setup
    cd "$BED_REPO"
    stage "cargo fmt --check" cargo fmt --all --check
    stage "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
    stage "cargo test" cargo test --workspace --no-fail-fast
    # The nested scenarios are #[ignore]d in a plain `cargo test`. One L0 takes
    # both cores: one scenario at a time (the Rust API also holds a lock).
    stage "bed prepare" cmd_prepare_quiet
    # Benchmarks (tests named bench_*) print figures and assert nothing about
    # speed; they have their own command so the test run stays short.
    stage "nested scenarios" cargo test --workspace --no-fail-fast --test 'nested_*' -- --ignored --test-threads=1 --skip bench_
    if [ ${#failed[@]} -gt 0 ]; then
        bed_log "FAILED after $((SECONDS - start)) s: ${failed[*]}"
        return 1
    fi
    bed_log "all tests passed in $((SECONDS - start)) s"
}

# The benchmarks: each prints its figures (--nocapture) and fails only if the
# scenario itself fails.
cmd_bench() {
    cmd_setup
    cd "$BED_REPO"
    cmd_prepare_quiet
    cargo test --workspace --no-fail-fast --test 'nested_*' -- --ignored --test-threads=1 --nocapture bench_
}

cmd_prepare_quiet() { (cmd_prepare >/dev/null); }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

main() {
    case "${1:-}" in
    setup | prepare | launch | run | demo | test | bench)
        local c="$1"
        shift
        "cmd_$c" "$@"
        ;;
    help | -h | --help) usage ;;
    *)
        usage >&2
        return 2
        ;;
    esac
}

# One line, so bash has read all of it before running: editing this file while
# a long `bed.sh test` runs cannot change what that run executes.
main "$@"; exit $?
