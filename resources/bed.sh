#!/usr/bin/env bash
# The nested test bed's entry point (docs/test-bed.md).
#
#   bed.sh setup       host packages (resources/setup.sh)
#   bed.sh prepare     kernel, Debian kernel, static passvm, images; prints KEY=path
#   bed.sh launch ...  boot L0 -> L1 and run one scenario (artifacts from the last prepare)
#   bed.sh run ...     prepare, then launch
#   bed.sh demo        setup + run the demo scenario (passvm passes a disk to L2)
#   bed.sh test        setup + fmt + clippy + unit tests + every nested scenario
#   bed.sh bench [--peers [--ch-source DIR --micro-http-source DIR]]
#                      setup + the nested benchmarks (boot time and RSS, DMA map
#                      time, disk throughput): figures printed, nothing asserted;
#                      --peers: only passvm against QEMU and Cloud Hypervisor
#   bed.sh soak [--runs N] [--qemu LIST] BINARY::TEST...
#                      setup + each nested test N times [20] with each L0 QEMU in
#                      LIST [built,packaged], interleaved, without retries; prints
#                      per QEMU and test: passes, hangs, crashes, slow passes, times
#
# L0's QEMU: the one prepare builds (resources/qemu/build.sh) unless
# PASSVM_BED_QEMU says otherwise: "packaged" (the installed
# qemu-system-x86_64) or a path.
#
# launch/run options:
#   --scenario NAME      resources/scenarios/NAME.sh (required)
#   --l1 own|debian|peers  L1 kernel: the bed kernel (iommufd + cdev) or Debian's
#                        6.12 (VFIO groups only); peers: the bed kernel with QEMU
#                        and Cloud Hypervisor in L1 (bench --peers builds it) [own]
#   --device SPEC        repeatable; NAMEs are how scenarios find them (bed_bdf NAME):
#                          blk:NAME        virtio-blk on the root bus, its own group, no reset
#                          blk-rom:NAME    virtio-blk with an option ROM (WORKDIR/NAME.rom)
#                          blk-rp:NAME     virtio-blk behind a PCIe root port (FLR/PM/bus reset)
#                          blk-aer:NAME    the same with an AER capability (errors reach L1's AER driver)
#                          blk-mf:NAME+NAME  two virtio-blk functions of one slot: one group
#                          blk-mf-rp:NAME+NAME  the same behind a PCIe root port, without FLR or
#                                          PM reset: only a bus reset resets them (both at once)
#                          e1000e:NAME     e1000e NIC (QEMU user network: 10.0.2.2 answers ping)
#                          edu:NAME        QEMU's edu device
#                          nvme:NAME       NVMe controller with disk NAME (MSI-X in BAR 0)
#                          ahci:NAME       ICH9 AHCI with SATA disk NAME (MSI, no MSI-X)
#                          serial:NAME     PCI 16550 (I/O BAR, INTx only); output in WORKDIR/NAME.out
#                          ivshmem:NAME    ivshmem-plain, 8 GiB 64-bit BAR 2 = WORKDIR/NAME.shm
#                          igb:NAME        igb SR-IOV PF behind a root port (L1 makes the VFs);
#                                          its frames in WORKDIR/NAME.pcap
#                        every blk, nvme and ahci NAME gets a disk image WORKDIR/NAME.img (16 MiB, raw)
#                        whose first sector reads "PASSVM-DISK name=NAME"
#   --workdir DIR        disk images go here                        [mktemp -d]
#   --timeout SECS       QEMU is stopped after this long, 0 for never [300]
#   --append ARGS        extra L1 kernel arguments (e.g. loglevel=7)
#   --memory MIB         L1 RAM                                     [3072]
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

ENV_FILE="$PASSVM_CACHE/bed.env"
DISK_MIB=16
# Large enough that the BAR must go above 4 GiB in every level's address space.
IVSHMEM_GIB=8

cmd_setup() { "$BED_RESOURCES/setup.sh"; }

# Every step checks its status explicitly: this also runs inside `if` (the
# test stages), where `set -e` does not apply.
cmd_prepare() {
    mkdir -p "$PASSVM_CACHE" || return 1
    # Concurrent prepares (two test binaries, two developers) would race on
    # the same cache entries.
    exec 9>"$PASSVM_CACHE/prepare.lock" && flock 9 || return 1
    local kernel debian passvm images qemu
    qemu="$("$BED_RESOURCES/qemu/build.sh")" || bed_die "the QEMU build failed"
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
        echo "BED_QEMU=$qemu"
        echo "$images"
    } >"$ENV_FILE.tmp" && mv "$ENV_FILE.tmp" "$ENV_FILE" || bed_die "cannot write $ENV_FILE"
    exec 9>&-
    cat "$ENV_FILE"
}

# A PCI option ROM image of 6 KiB at $1: the 0x55AA header (size byte: 12 x 512),
# a PCIR structure at 0x1c (vendor 1af4, device 1001, image length 12 x 512, code
# type 0, "last image"), the rest a counting pattern the tests can recognise.
make_rom() {
    python3 - "$1" <<'PY'
import struct, sys
rom = bytearray((i * 7 + 3) % 251 for i in range(6144))
rom[0:3] = b"\x55\xaa\x0c"
struct.pack_into("<H", rom, 0x18, 0x1c)
pcir = b"PCIR" + struct.pack("<HHHHB3sHHBBH", 0x1af4, 0x1001, 0, 0x18, 0, b"\x00\x00\x01", 12, 1, 0, 0x80, 0)
rom[0x1c:0x1c + len(pcir)] = pcir
open(sys.argv[1], "wb").write(rom)
PY
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
    peers)
        # The bed kernel with QEMU and Cloud Hypervisor beside passvm (bench --peers).
        kernel="$BED_KERNEL" initrd="${PASSVM_BED_PEERS_INITRD:-}"
        [ -f "$initrd" ] || bed_die "--l1 peers needs the peers' image: run $0 bench --peers"
        ;;
    *) bed_die "--l1 must be own, debian or peers, not '$l1'" ;;
    esac
    [ -n "$workdir" ] || workdir="$(mktemp -d -t passvm-bed.XXXXXX)"
    mkdir -p "$workdir"

    # Fixed slots keep BDFs stable from run to run: root-bus devices from 0x10
    # up, in the order given; the N-th root port's endpoint is bus N.
    local qemu_dev=() map=() slot=16 port=0 spec kind names a b addr
    make_disk() {
        local img="$workdir/$1.img"
        rm -f "$img"
        truncate -s "${DISK_MIB}M" "$img"
        printf 'PASSVM-DISK name=%s\n' "$1" | dd of="$img" conv=notrunc status=none
        qemu_dev+=(-drive "if=none,id=drv-$1,file=$img,format=raw")
    }
    # A root-bus device NAME at this slot: its BDF for L1, and the next slot.
    on_root_bus() {
        map+=("$names@0000:00:$(printf %02x $slot).0")
        slot=$((slot + 1))
    }
    # The next PCIe root port, at this slot: its secondary bus is rpPORT for QEMU
    # and bus PORT in L1.
    root_port() {
        port=$((port + 1))
        qemu_dev+=(-device "pcie-root-port,id=rp$port,chassis=$port,slot=$port,addr=$addr")
        slot=$((slot + 1))
    }
    # Device NAME behind the next root port: bus PORT's endpoint 00.0 in L1.
    behind_root_port() {
        root_port
        map+=("$names@0000:$(printf %02x $port):00.0")
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
        # Root-bus devices take the next slot; its address is ADDR for QEMU.
        addr="$(printf 0x%x $slot)"
        case "$kind" in
        blk)
            make_disk "$names"
            qemu_dev+=(-device "$blk,drive=drv-$names,id=$names,addr=$addr")
            on_root_bus
            ;;
        blk-rom)
            # A virtio-blk function with an expansion ROM: WORKDIR/NAME.rom, a valid
            # 6 KiB PCI option ROM image (0x55AA, a PCIR structure marking it the last
            # image) that guests read through the ROM BAR.
            make_disk "$names"
            make_rom "$workdir/$names.rom"
            qemu_dev+=(-device "$blk,drive=drv-$names,id=$names,addr=$addr,romfile=$workdir/$names.rom")
            on_root_bus
            ;;
        blk-rp)
            make_disk "$names"
            behind_root_port
            qemu_dev+=(-device "$blk,drive=drv-$names,id=$names,bus=rp$port")
            ;;
        blk-aer)
            # With AER, L1's AER driver (and aer_inject) reports its errors to
            # vfio-pci, which signals passvm's error eventfd.
            make_disk "$names"
            behind_root_port
            qemu_dev+=(-device "$blk,drive=drv-$names,id=$names,bus=rp$port,aer=on")
            ;;
        blk-mf)
            a="${names%%+*}" b="${names#*+}"
            [ "$a" != "$names" ] || bed_die "blk-mf needs two names: blk-mf:NAME+NAME"
            make_disk "$a"
            make_disk "$b"
            # Functions of one slot share a group. Not a conventional PCI
            # bridge: its requester ID makes the virtio-iommu fault (test-bed.md).
            qemu_dev+=(-device "$blk,drive=drv-$a,id=$a,addr=$addr.0,multifunction=on")
            qemu_dev+=(-device "$blk,drive=drv-$b,id=$b,addr=$addr.1")
            map+=("$a@0000:00:$(printf %02x $slot).0" "$b@0000:00:$(printf %02x $slot).1")
            slot=$((slot + 1))
            ;;
        blk-mf-rp)
            a="${names%%+*}" b="${names#*+}"
            [ "$a" != "$names" ] || bed_die "blk-mf-rp needs two names: blk-mf-rp:NAME+NAME"
            make_disk "$a"
            make_disk "$b"
            # No FLR, and PM with No_Soft_Reset (D3hot to D0 keeps the state):
            # neither function has a reset of its own; the bus reset resets both
            # (VFIO_DEVICE_PCI_HOT_RESET).
            root_port
            local norst="x-pcie-flr-init=off,x-pcie-pm-no-soft-reset=on"
            qemu_dev+=(-device "$blk,drive=drv-$a,id=$a,bus=rp$port,addr=0.0,multifunction=on,$norst")
            qemu_dev+=(-device "$blk,drive=drv-$b,id=$b,bus=rp$port,addr=0.1,$norst")
            map+=("$a@0000:$(printf %02x $port):00.0" "$b@0000:$(printf %02x $port):00.1")
            ;;
        e1000e)
            qemu_dev+=(-netdev "user,id=net-$names" -device "e1000e,netdev=net-$names,id=$names,romfile=,addr=$addr")
            on_root_bus
            ;;
        edu)
            qemu_dev+=(-device "edu,id=$names,addr=$addr")
            on_root_bus
            ;;
        nvme)
            # The MSI-X table and PBA live in BAR 0 beside the doorbells.
            make_disk "$names"
            qemu_dev+=(-device "nvme,serial=$names,drive=drv-$names,id=$names,addr=$addr")
            on_root_bus
            ;;
        ahci)
            # MSI (one vector) and no MSI-X; an I/O BAR (index/data) and the
            # AHCI registers in BAR 5.
            make_disk "$names"
            qemu_dev+=(-device "ich9-ahci,id=$names,addr=$addr"
                -device "ide-hd,drive=drv-$names,bus=$names.0")
            on_root_bus
            ;;
        serial)
            # A 16550 behind one I/O BAR, INTx only; what the guest sends lands
            # in WORKDIR/NAME.out.
            rm -f "$workdir/$names.out"
            qemu_dev+=(-chardev "file,id=chr-$names,path=$workdir/$names.out"
                -device "pci-serial,chardev=chr-$names,id=$names,addr=$addr")
            on_root_bus
            ;;
        ivshmem)
            # A prefetchable 64-bit BAR 2 of IVSHMEM_GIB GiB backed by the
            # sparse file WORKDIR/NAME.shm: what the guest writes through the
            # BAR is in the file at the same offset.
            rm -f "$workdir/$names.shm"
            truncate -s "${IVSHMEM_GIB}G" "$workdir/$names.shm"
            qemu_dev+=(-object "memory-backend-file,id=mem-$names,share=on,mem-path=$workdir/$names.shm,size=${IVSHMEM_GIB}G"
                -device "ivshmem-plain,memdev=mem-$names,id=$names,addr=$addr")
            on_root_bus
            ;;
        igb)
            # An SR-IOV physical function (82576, up to 7 VFs) behind a root
            # port, on QEMU's user network; every frame is captured in
            # WORKDIR/NAME.pcap. L1 creates the VFs (bus N, from device 0x10).
            rm -f "$workdir/$names.pcap"
            behind_root_port
            qemu_dev+=(-netdev "user,id=net-$names"
                -object "filter-dump,id=dump-$names,netdev=net-$names,file=$workdir/$names.pcap"
                -device "igb,netdev=net-$names,id=$names,bus=rp$port")
            ;;
        *) bed_die "unknown device kind '$kind' in '$spec' (blk, blk-rom, blk-rp, blk-aer, blk-mf, blk-mf-rp, e1000e, edu, nvme, ahci, serial, ivshmem, igb)" ;;
        esac
    done
    local devmap
    devmap="$(IFS=,; echo "${map[*]}")"

    # Both allow_unsafe_interrupts: the virtio-iommu has no interrupt remapping,
    # and without them VFIO_SET_IOMMU / the iommufd bind fail with EPERM.
    local cmdline="console=ttyS0 panic=-1 quiet vfio_iommu_type1.allow_unsafe_interrupts=1"
    cmdline+=" iommufd.allow_unsafe_interrupts=1 passvm.scenario=$scenario"
    [ -n "$devmap" ] && cmdline+=" passvm.devices=$devmap"
    # PASSVM_BED_L1_APPEND: arguments for every run's L1 (e.g. passvm.trace=1
    # for the whole soak), besides a run's own --append.
    [ -n "$append" ] && cmdline+=" $append"
    [ -n "${PASSVM_BED_L1_APPEND:-}" ] && cmdline+=" $PASSVM_BED_L1_APPEND"

    local qemu_bin
    case "${PASSVM_BED_QEMU:-built}" in
    built) qemu_bin="${BED_QEMU:-}" ;;
    packaged) qemu_bin="$(command -v qemu-system-x86_64)" || bed_die "no qemu-system-x86_64 installed: run $0 setup" ;;
    *) qemu_bin="$PASSVM_BED_QEMU" ;;
    esac
    [ -n "$qemu_bin" ] && [ -x "$qemu_bin" ] ||
        bed_die "L0's QEMU '${qemu_bin:-(none)}' is not there: run $0 prepare (PASSVM_BED_QEMU=${PASSVM_BED_QEMU:-built})"
    local qemu=("$qemu_bin" -M q35 -accel "${PASSVM_BED_ACCEL:-tcg}" -cpu max -smp 2 -m "$memory"
        -nographic -no-reboot -vga none -nic none
        -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
        -device virtio-iommu-pci,addr=0x2 "${qemu_dev[@]}")
    # PASSVM_BED_QEMU_ARGS: more L0 options while debugging (e.g. "-trace igb_*",
    # whose lines go to the log with QEMU's other messages). Split on spaces.
    # shellcheck disable=SC2206
    [ -n "${PASSVM_BED_QEMU_ARGS:-}" ] && qemu+=($PASSVM_BED_QEMU_ARGS)
    # One L0 takes both cores: runs wait for each other (the Rust API holds
    # the same lock itself and says so). QEMU inherits the descriptor, so the
    # lock lasts exactly as long as it runs.
    if [ -z "${PASSVM_BED_LOCKED:-}" ]; then
        exec 8>"${TMPDIR:-/tmp}/passvm-bed.lock"
        flock -n 8 || { bed_log "waiting for another bed run to finish"; flock 8; }
    fi
    bed_log "workdir $workdir"
    bed_log "L0: $("$qemu_bin" --version | head -n 1) ($qemu_bin)"
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
    stage "fuzz (brief)" "$BED_REPO/resources/fuzz.sh" ci
    # The nested scenarios are #[ignore]d in a plain `cargo test`. One L0 takes
    # both cores: one scenario at a time (the Rust API also holds a lock).
    stage "bed prepare" cmd_prepare_quiet
    # Every scenario run leaves a line here (tests/bed/journal.rs): the closing
    # summary names each retry and slow pass, so a rising rate shows in CI.
    local journal="$BED_REPO/target/tmp/bed/journal.tsv"
    mkdir -p "${journal%/*}" && : >"$journal"
    # Benchmarks (tests named bench_*) print figures and assert nothing about
    # speed; they have their own command so the test run stays short.
    stage "nested scenarios" env PASSVM_BED_JOURNAL="$journal" \
        cargo test --workspace --no-fail-fast --test 'nested_*' -- --ignored --test-threads=1 --skip bench_
    journal_summary "$journal"
    if [ ${#failed[@]} -gt 0 ]; then
        bed_log "FAILED after $((SECONDS - start)) s: ${failed[*]}"
        return 1
    fi
    bed_log "all tests passed in $((SECONDS - start)) s"
}

# The closing summary of a journal (tests/bed/journal.rs writes the lines:
# test, scenario, end, attempts, seconds, slow, detail, retried).
journal_summary() {
    [ -s "$1" ] || { bed_log "no nested scenario ran (empty journal $1)"; return 0; }
    awk -F'\t' '
        { n++; ends[$3]++
          if ($4 > 1) { r++; extra += $4 - 1
                        rl[r] = sprintf("%s (%s): %d runs, then %s%s; retried: %s", $1, $2, $4, $3,
                                        ($7 == "-" ? "" : " (" $7 ")"), $8) }
          if ($6 != "-") { s++; sl[s] = sprintf("%s (%s, %s s): %s", $1, $2, $5, $6) } }
        END {
          # Counted by how each run ended, not by test result: a test may
          # expect its run to hang (bed-silent does).
          printf "[bed] nested scenarios: %d run: %d passed, %d hung, %d crashed, %d failed otherwise; %d retried (%d extra runs), %d slow passes\n",
                 n, ends["pass"], ends["hung"], ends["crash"], ends["fail"], r, extra, s
          for (i = 1; i <= r; i++) print "[bed]   retried: " rl[i]
          for (i = 1; i <= s; i++) print "[bed]   slow: " sl[i]
        }' "$1" >&2
}

count_lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# Hang rates: the same tests back to back with each L0 QEMU, interleaved so
# both see the same machine load, never retried (a hang is what is counted).
cmd_soak() {
    local runs=20 qemus=built,packaged tests=() q t i dir before
    while [ $# -gt 0 ]; do
        case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --qemu) qemus="$2"; shift 2 ;;
        -*) bed_die "unknown soak option '$1' (see the top of $0)" ;;
        *) [[ "$1" == nested_*::* ]] || bed_die "name tests as BINARY::TEST (e.g. nested_bed::demo_guest_uses_the_passed_through_disk), not '$1'"
           tests+=("$1"); shift ;;
        esac
    done
    [ ${#tests[@]} -gt 0 ] || bed_die "soak needs at least one BINARY::TEST"
    [[ "$runs" =~ ^[1-9][0-9]*$ ]] || bed_die "--runs must be a positive number, not '$runs'"
    local qlist
    IFS=, read -ra qlist <<<"$qemus"
    cmd_setup
    cd "$BED_REPO"
    cmd_prepare_quiet
    # Build the test binaries once, so no run's time includes a compile.
    cargo test --workspace --no-run --quiet --test 'nested_*' 2>/dev/null || bed_die "the nested tests do not build"
    dir="$BED_REPO/target/tmp/bed/soak-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$dir"
    bed_log "soak: ${#tests[@]} test(s) x $runs runs x QEMU ${qlist[*]}; journals and failed runs' output in $dir"
    for ((i = 1; i <= runs; i++)); do
        for q in "${qlist[@]}"; do
            for t in "${tests[@]}"; do
                before="$(count_lines "$dir/$q.tsv")"
                if ! PASSVM_BED_QEMU="$q" PASSVM_BED_RETRIES=0 PASSVM_BED_JOURNAL="$dir/$q.tsv" \
                    cargo test --quiet --test "${t%%::*}" -- --ignored --exact "${t#*::}" >"$dir/out.log" 2>&1; then
                    mv "$dir/out.log" "$dir/$q-$i-${t#*::}.log"
                fi
                # A test that died before its journal line (the bed did not start) still counts.
                [ "$(count_lines "$dir/$q.tsv")" -gt "$before" ] ||
                    printf '%s\t-\tfail\t1\t0\t-\tno journal line: %s\t-\n' "${t#*::}" "$dir/$q-$i-${t#*::}.log" >>"$dir/$q.tsv"
                bed_log "soak $i/$runs $q ${t#*::}: $(tail -n 1 "$dir/$q.tsv" | cut -f 3,5 | tr '\t' ' ') s"
            done
        done
    done
    for q in "${qlist[@]}"; do
        bed_log "QEMU $q ($dir/$q.tsv):"
        sort -t "$(printf '\t')" -k1,1 -k5,5n "$dir/$q.tsv" | awk -F'\t' '
            function flush() { if (name != "") printf "[bed]   %s: %d runs, %d pass, %d hung, %d crash, %d other failures, %d slow passes; pass median %s s, max %s s\n",
                               name, runs, pass, hung, crash, fail, slow, (pass ? t[int((pass + 1) / 2)] : "-"), (pass ? t[pass] : "-") }
            $1 != name { flush(); name = $1; runs = pass = hung = crash = fail = slow = 0; delete t }
            { runs++ }
            $3 == "pass" { t[++pass] = $5; if ($6 != "-") slow++ }
            $3 == "hung" { hung++ } $3 == "crash" { crash++ } $3 == "fail" { fail++ }
            END { flush() }' >&2
    done
}

# The benchmarks: each prints its figures (--nocapture) and fails only if the
# scenario itself fails.
#
# bench --peers [--ch-source DIR --micro-http-source DIR]: only the side-by-side
# benchmark (tests/nested_peers.rs): passvm, this host's QEMU and, when both sources
# are given (git checkouts or bare git directories), Cloud Hypervisor built from them
# (resources/peers/cloud-hypervisor.sh; cached by their commits), in one L1.
cmd_bench() {
    local peers=0 ch_src="" mh_src=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --peers) peers=1; shift ;;
        --ch-source) ch_src="$2"; shift 2 ;;
        --micro-http-source) mh_src="$2"; shift 2 ;;
        *) bed_die "unknown bench option '$1' (--peers, --ch-source DIR, --micro-http-source DIR)" ;;
        esac
    done
    cmd_setup
    cd "$BED_REPO"
    cmd_prepare_quiet
    if [ "$peers" = 0 ]; then
        cargo test --workspace --no-fail-fast --test 'nested_*' -- --ignored --test-threads=1 --nocapture bench_ --skip bench_peers
        return
    fi
    local ch="" image
    if [ -n "$ch_src$mh_src" ]; then
        [ -n "$ch_src" ] && [ -n "$mh_src" ] || bed_die "--ch-source and --micro-http-source go together"
        ch="$("$BED_RESOURCES/peers/cloud-hypervisor.sh" "$ch_src" "$mh_src")" || bed_die "the Cloud Hypervisor build failed"
    else
        bed_log "no --ch-source/--micro-http-source: Cloud Hypervisor is left out"
    fi
    . "$ENV_FILE"
    image="$("$BED_RESOURCES/peers/image.sh" "$BED_L1_OWN_INITRD" $ch)" || bed_die "building the peers' image failed"
    PASSVM_BED_PEERS_INITRD="${image#BED_L1_PEERS_INITRD=}" \
        cargo test --test nested_peers -- --ignored --nocapture bench_peers
}

cmd_prepare_quiet() { (cmd_prepare >/dev/null); }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

main() {
    case "${1:-}" in
    setup | prepare | launch | run | demo | test | bench | soak)
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
