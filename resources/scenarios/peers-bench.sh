# Issue 12's side-by-side benchmark (figures printed, not asserted): the same L2 (the
# bed kernel as vmlinux/PVH, its initramfs, 1 vCPU, the same plain command line) under
# passvm, QEMU (this image's /bed/peers/qemu-system-x86_64: the bed host's own, see
# resources/peers/image.sh) and Cloud Hypervisor (/bed/peers/cloud-hypervisor, when the
# image has it), interleaved run by run so every VMM sees the same machine state.
# Cases: none (256 MiB, no device), blk (256 MiB, the disk d0 passed through), blk2
# (256 MiB, disks d0 and d1), big (1536 MiB with d0: every byte pinned), read (256 MiB
# with d0: L2 reads it, resources/l2/checks/peers-read.sh, after L1 read it the same way
# before passing it on). L2 powers off through ACPI at the end.
# L1 arguments: passvm.bench_runs=N (default 3), passvm.bench_cases=LIST (comma-separated,
# default none,blk,blk2,big,read), passvm.bench_vmms=LIST (default every VMM the image
# has; passvm-bg and passvm-bb are passvm with dma_map=background and before-boot,
# passvm-group with --vfio-backend group, passvm-huge with hugepages=on: never a
# default. passvm-huge reserves 1536 MiB of L1's 3 GiB as huge pages for the whole
# run, which leaves any other VMM too little for the big case (OOM-killed, rc 9): run
# passvm-huge alone).
# One marker per run:
#   peer=<vmm> case=<case> run=<i> init_ms=<VMM start -> L2 init's first line>
#        total_ms=<VMM start -> VMM exit> l2_init_s=<L2's own uptime at init>
#        rss_kib=<the VMM's peak RSS> mem_mib=<guest RAM> rc=<exit status>
# and per read measurement (L1's own reads as peer=L1):
#   read=peer=<vmm> kind=<read_ms: 128 MiB in 1 MiB reads | read4k_ms: 4096 reads of
#        4 KiB> run=<i> ms=<milliseconds>
# and per run, when L1 has tracefs, the exits to the VMM by reason:
#   uexits=peer=<vmm> case=<case> run=<i> total=<n> KVM_EXIT_IO=<n> KVM_EXIT_MMIO=<n> ...
# and the guest's port accesses that exited to L1's KVM (in-kernel devices included), the
# busiest ten by port and direction:
#   pio=peer=<vmm> case=<case> run=<i> total=<n> 0x3fd:r=<n> 0x3f8:w=<n> ...
# and, for a run with a device, the IOMMU mappings L1 made while it ran (the iommu:map and
# iommu:unmap tracepoints: every backend ends in iommu_map), from the first to the last:
#   dmamap=peer=<vmm> case=<case> run=<i> maps=<n> map_mib=<MiB> map_at=<ms after start>
#          map_ms=<first -> last> unmaps=<n> unmap_mib=<MiB> unmap_at=.. unmap_ms=..
#          [vmm_ms=<passvm's own "DMA-mapped" time: the prefault, the pin and the map>]
# The map span includes whatever the VMM does between its map calls (the peers fault the
# RAM in inside them; passvm before them, which only vmm_ms counts).
# Times come from L1's /proc/uptime (10 ms resolution); the peak RSS is the kernel's
# ru_maxrss (busybox time -v, corrected: bed_time_rss_kib), which includes the guest RAM
# the guest touched or the VMM pinned.
runs="$(bed_cmdline_arg passvm.bench_runs || echo 3)"
cases="$(bed_cmdline_arg passvm.bench_cases || echo none,blk,blk2,big,read)"
vmms="$(bed_cmdline_arg passvm.bench_vmms || true)"
QEMU=/bed/peers/qemu-system-x86_64
CH=/bed/peers/cloud-hypervisor
if [ -z "$vmms" ]; then
    vmms=passvm
    [ -x "$QEMU" ] && vmms="$vmms,qemu"
    [ -x "$CH" ] && vmms="$vmms,ch"
fi
bed_report vmms "$vmms"
# L1's KVM halt polling (kvm.halt_poll_ns on L1's command line changes it): how long a
# halted L2 vCPU spins before it sleeps, which shapes the interrupt path the reads time.
bed_report halt_poll_ns "$(cat /sys/module/kvm/parameters/halt_poll_ns 2>/dev/null || echo '?')"
case ",$vmms," in
*,passvm-huge,*)
    echo 768 >/proc/sys/vm/nr_hugepages
    bed_report hugepages "$(cat /proc/sys/vm/nr_hugepages)"
    ;;
esac
CR="$(printf '\r')"
# tracefs for the exit counts (none: no counts).
TRACE=/sys/kernel/tracing
[ -d "$TRACE/events/kvm" ] || mount -t tracefs tracefs "$TRACE" 2>/dev/null
[ -e "$TRACE/events/kvm/kvm_userspace_exit/enable" ] || TRACE=""
[ -z "$TRACE" ] || {
    echo 16384 >"$TRACE/buffer_size_kb"
    # One clock for every CPU: the default (local) one differs between L1's vCPUs by
    # seconds under TCG, which would make spans across CPUs meaningless.
    echo mono >"$TRACE/trace_clock" 2>/dev/null || echo global >"$TRACE/trace_clock"
}
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
bdf="$(bed_bdf d0)" bdf1="$(bed_bdf d1)"
[ -n "$bdf" ] && [ -n "$bdf1" ] || bed_fail "no disks d0 and d1 (Scenario::device(Device::blk(..)))"
# L1 reads d0 on its own virtio-blk driver first: the reference for L2's reads.
case ",$cases," in
*,read,*)
    bed_virtio_blk_dev "$bdf"
    dev="$BED_BLK_DEV"
    for kind in read_ms read4k_ms; do
        rm -f /tmp/.l1read
        case "$kind" in
        read_ms) bed_read_bench "$dev" ms >/tmp/.l1read ;;
        *) bed_read4k_bench "$dev" ms >/tmp/.l1read ;;
        esac
        sed -n 's/^BED ms=//p' /tmp/.l1read | while read -r ms; do
            bed_report read "peer=L1 kind=$kind run=0 ms=$ms"
        done
    done
    ;;
esac
for b in "$bdf" "$bdf1"; do
    bed_bind_vfio "$b"
    bed_report device "$b group=$(basename "$(readlink "/sys/bus/pci/devices/$b/iommu_group")")"
done

# dma_spans TRACE T0_MS: "maps=N map_mib=M map_at=A map_ms=T unmaps=... unmap_at=A
# unmap_ms=T" from the iommu:map ("... 123.456789: map: IOMMU: iova=0x.. - 0x.. paddr=0x..
# size=4096") and iommu:unmap ("... unmap: IOMMU: iova=.. - .. size=.. unmapped_size=..")
# lines: how many, how much, when the first came (ms after T0, the VMM's start, both on
# CLOCK_MONOTONIC: the trace clock is mono) and the span to the last. The legacy
# container's attach maps and unmaps a test page first (vfio_test_domain_fgsp): events up
# to an unmap that comes before the last map are that probe and are left out. A span
# says nothing of one large call (iommufd unmaps all RAM in one or two).
dma_spans() {
    awk -v t0="$2" '
    / map: IOMMU: / || / unmap: IOMMU: / {
        k = ($0 ~ / unmap: IOMMU: /) ? "unmap" : "map"
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^[0-9]+\.[0-9]+:$/) t = substr($i, 1, length($i) - 1) * 1000
            if (k == "map" && $i ~ /^size=/) b = substr($i, 6) + 0
            if (k == "unmap" && $i ~ /^unmapped_size=/) b = substr($i, 15) + 0
        }
        ev++; kind[ev] = k; at[ev] = t; size[ev] = b
        if (k == "map") lastmap = ev
        if (k == "unmap" && !firstunmap) firstunmap = ev
    }
    END {
        skip = (firstunmap && firstunmap < lastmap) ? firstunmap : 0
        for (e = skip + 1; e <= ev; e++) {
            k = kind[e]
            if (!(k in n)) first[k] = at[e]
            n[k]++; last[k] = at[e]; bytes[k] += size[e]
        }
        for (j = 1; j <= 2; j++) {
            k = (j == 1) ? "map" : "unmap"
            if (k in n) printf "%ss=%d %s_mib=%d %s_at=%d %s_ms=%d ", k, n[k], k, bytes[k] / 1048576, k, first[k] - t0, k, last[k] - first[k]
            else printf "%ss=0 %s_mib=0 %s_at=- %s_ms=- ", k, k, k, k
        }
    }' "$1"
}

# dma_vmm_ms: " vmm_ms=N" from passvm's "DMA-mapped ... in N ms" line in /tmp/.vmm, if any.
dma_vmm_ms() {
    sed -n 's/.*DMA-mapped .* in \([0-9]*\)\.[0-9]* ms.*/ vmm_ms=\1/p' /tmp/.vmm 2>/dev/null | head -n 1
}

# run_vmm VMM CASE: one boot of L2; sets rc, init_ms, total_ms, l2_init, rss.
run_vmm() {
    local vmm="$1" case="$2" mem=256 check=boot devs="" d
    case "$case" in
    none) ;;
    blk) check=disk devs="$bdf" ;;
    blk2) check=disk devs="$bdf $bdf1" ;;
    big) check=disk devs="$bdf" mem=1536 ;;
    read) check=peers-read devs="$bdf" ;;
    *) bed_fail "unknown bench case '$case' (none, blk, blk2, big, read)" ;;
    esac
    local cmd="console=ttyS0 reboot=k panic=-1 quiet passvm.check=$check passvm.end=poweroff"
    set --
    case "$vmm" in
    passvm | passvm-bg | passvm-bb | passvm-group | passvm-huge)
        # passvm's variants side by side: passvm is the default (dma_map=auto, the
        # iommufd backend here), passvm-bg pins beside the boot, passvm-bb before it,
        # passvm-group uses the legacy VFIO container (the peers' backend).
        local timing=auto backend=auto
        [ "$vmm" = passvm-bg ] && timing=background
        [ "$vmm" = passvm-bb ] && timing=before-boot
        [ "$vmm" = passvm-group ] && backend=group
        local pages=""
        [ "$vmm" = passvm-huge ] && pages=",hugepages=on"
        set -- env RUST_LOG=info "$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cmdline "$cmd" \
            --cpus boot=1 --memory "size=${mem}M,dma_map=$timing$pages" --vfio-backend "$backend"
        for d in $devs; do set -- "$@" --device "$d"; done
        ;;
    qemu)
        set -- "$QEMU" -M q35 -accel kvm -cpu host -smp 1 -m "${mem}M" -nodefaults \
            -display none -serial stdio -no-reboot \
            -kernel "$L2_VMLINUX" -initrd "$L2_INITRD" -append "$cmd"
        for d in $devs; do set -- "$@" -device "vfio-pci,host=$d"; done
        ;;
    ch)
        # max_phys_bits=39: its 64-bit BARs stay inside the virtio-iommu's input range.
        set -- "$CH" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cmdline "$cmd" \
            --cpus boot=1,max_phys_bits=39 --memory "size=${mem}M" --serial tty --console off
        for d in $devs; do set -- "$@" --device "path=/sys/bus/pci/devices/$d"; done
        ;;
    *) bed_fail "unknown VMM '$vmm' (passvm, passvm-bg, passvm-bb, passvm-group, passvm-huge, qemu, ch)" ;;
    esac
    rm -f /tmp/.init_ms /tmp/.init_up /tmp/.rc /tmp/.time /tmp/.l2bed /tmp/.console
    # Every exit to the VMM during the run (KVM's kvm_userspace_exit tracepoint), to
    # compare what each VMM handles itself per boot and per read.
    if [ -n "$TRACE" ]; then
        echo 0 >"$TRACE/tracing_on"
        echo >"$TRACE/trace"
        echo 1 >"$TRACE/events/kvm/kvm_userspace_exit/enable"
        echo 1 >"$TRACE/events/kvm/kvm_pio/enable"
        [ ! -e "$TRACE/events/iommu/map/enable" ] || {
            echo 1 >"$TRACE/events/iommu/map/enable"
            echo 1 >"$TRACE/events/iommu/unmap/enable"
        }
        echo 1 >"$TRACE/tracing_on"
    fi
    local t0 t1
    t0="$(uptime_ms)"
    {
        # A run that takes over 80 s is stuck (a run takes 3-15 s): killed (rc 137), its
        # console's end printed below, and the benchmark goes on within the bed's 90 s
        # silence limit.
        busybox time -v -o /tmp/.time busybox timeout -s KILL 80 "$@" </dev/null 2>/tmp/.vmm
        # A new line first: the guest's last line may have no end (a crash mid-line).
        rc=$?
        echo
        echo "PASSVM-BENCH-RC $rc"
    } | while IFS= read -r line; do
        line="${line%"$CR"}"
        echo "$line" >>/tmp/.console
        case "$line" in
        *"PASSVM-L2: init up"*)
            [ -f /tmp/.init_ms ] || { uptime_ms >/tmp/.init_ms; echo "$line" >/tmp/.init_up; } ;;
        *"PASSVM-L2-RESULT"*) echo "L2| $line" ;;
        "BED read_ms="* | "BED read4k_ms="*) echo "${line#BED }" >>/tmp/.l2bed ;;
        "PASSVM-BENCH-RC "*) echo "${line#PASSVM-BENCH-RC }" >/tmp/.rc ;;
        esac
    done
    t1="$(uptime_ms)"
    if [ -n "$TRACE" ]; then
        echo 0 >"$TRACE/tracing_on"
        bed_report uexits "peer=$vmm case=$case run=$run total=$(grep -c kvm_userspace_exit "$TRACE/trace")$(
            grep -o 'reason [A-Z_]*' "$TRACE/trace" | sort | uniq -c | awk '{ printf " %s=%s", $3, $1 }')"
        # "kvm_pio: pio_read at 0x3fd size 1 count 1 val 0x60"
        bed_report pio "peer=$vmm case=$case run=$run total=$(grep -c 'kvm_pio:' "$TRACE/trace")$(
            sed -n 's/.*kvm_pio: pio_\([rw]\)[a-z]* at \(0x[0-9a-f]*\).*/\2:\1/p' "$TRACE/trace" |
                sort | uniq -c | sort -rn | head -n 10 | awk '{ printf " %s=%s", $2, $1 }')"
        [ -z "$devs" ] || bed_report dmamap "peer=$vmm case=$case run=$run $(dma_spans "$TRACE/trace" "$t0")$(dma_vmm_ms)"
    fi
    init_ms=-1
    [ -f /tmp/.init_ms ] && init_ms=$(($(cat /tmp/.init_ms) - t0))
    l2_init="$(sed -n 's/.*, uptime \([0-9.]*\).*/\1/p' /tmp/.init_up 2>/dev/null)"
    rss="$(bed_time_rss_kib /tmp/.time 2>/dev/null)"
    rc="$(cat /tmp/.rc 2>/dev/null || echo '?')"
    total_ms=$((t1 - t0))
    bed_report bench "peer=$vmm case=$case run=$run init_ms=$init_ms total_ms=$total_ms l2_init_s=${l2_init:--} rss_kib=${rss:-?} mem_mib=$mem rc=$rc"
    [ "$rc" = 0 ] || sed 's/^/VMM| /' /tmp/.vmm
    [ ! -f /tmp/.l2bed ] || while IFS== read -r kind ms; do
        bed_report read "peer=$vmm kind=$kind run=$run ms=$ms"
    done </tmp/.l2bed
    # passvm's own account of its start-up (info level: one line per phase).
    case "$vmm" in passvm*) grep -E "start-up|prefault|DMA-mapped|DMA map |bus mastering|vfio: pinning" /tmp/.vmm | sed 's/^/VMM| /' ;; esac
    # A failed run, or one whose guest took 10 s longer after its init than the check
    # needs (a stall to explain: test-bed.md, "Known hangs"): its console's end shows
    # where L2 was.
    if [ "$rc" != 0 ] ||
        { [ "$init_ms" -ge 0 ] && [ $((total_ms - init_ms)) -gt 10000 ] && [ "$case" != read ]; }; then
        echo "slow or failed run: $vmm $case $run: rc=$rc, init at $init_ms ms, exit at $total_ms ms; its console's end:"
        tail -n 15 /tmp/.console | sed 's/^/L2| /'
    fi
}

for case in $(echo "$cases" | tr ',' ' '); do
    run=1
    while [ "$run" -le "$runs" ]; do
        for vmm in $(echo "$vmms" | tr ',' ' '); do
            run_vmm "$vmm" "$case"
        done
        run=$((run + 1))
    done
done
