# Issue 12's side-by-side benchmark (figures printed, not asserted): the same L2 (the
# bed kernel as vmlinux/PVH, its initramfs, 1 vCPU, the same plain command line) under
# passvm, QEMU (this image's /bed/peers/qemu-system-x86_64: the bed host's own, see
# resources/peers/image.sh) and Cloud Hypervisor (/bed/peers/cloud-hypervisor, when the
# image has it), interleaved run by run so every VMM sees the same machine state.
# Cases: none (256 MiB, no device), blk (256 MiB, the disk d0 passed through),
# big (1536 MiB with d0: every byte pinned). L2 powers off through ACPI at the end.
# L1 arguments: passvm.bench_runs=N (default 3), passvm.bench_cases=LIST (comma-separated,
# default none,blk,big), passvm.bench_vmms=LIST (default every VMM the image has).
# One marker per run:
#   peer=<vmm> case=<case> run=<i> init_ms=<VMM start -> L2 init's first line>
#        total_ms=<VMM start -> VMM exit> l2_init_s=<L2's own uptime at init>
#        rss_kib=<the VMM's peak RSS> mem_mib=<guest RAM> rc=<exit status>
# Times come from L1's /proc/uptime (10 ms resolution); the peak RSS is the kernel's
# ru_maxrss (busybox time -v, corrected: bed_time_rss_kib), which includes the guest RAM
# the guest touched or the VMM pinned.
runs="$(bed_cmdline_arg passvm.bench_runs || echo 3)"
cases="$(bed_cmdline_arg passvm.bench_cases || echo none,blk,big)"
vmms="$(bed_cmdline_arg passvm.bench_vmms || true)"
QEMU=/bed/peers/qemu-system-x86_64
CH=/bed/peers/cloud-hypervisor
if [ -z "$vmms" ]; then
    vmms=passvm
    [ -x "$QEMU" ] && vmms="$vmms,qemu"
    [ -x "$CH" ] && vmms="$vmms,ch"
fi
bed_report vmms "$vmms"
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
bdf="$(bed_bdf d0)"
[ -n "$bdf" ] || bed_fail "no disk d0 (Scenario::device(Device::blk(\"d0\")))"
bed_bind_vfio "$bdf"
group="$(basename "$(readlink "/sys/bus/pci/devices/$bdf/iommu_group")")"
bed_report device "$bdf group=$group"

# run_vmm VMM CASE: one boot of L2; sets rc, init_ms, total_ms, l2_init, rss.
run_vmm() {
    local vmm="$1" case="$2" mem=256 check=boot dev=0
    case "$case" in
    none) ;;
    blk) check=disk dev=1 ;;
    big) check=disk dev=1 mem=1536 ;;
    *) bed_fail "unknown bench case '$case' (none, blk, big)" ;;
    esac
    local cmd="console=ttyS0 reboot=k panic=-1 quiet passvm.check=$check passvm.end=poweroff"
    set --
    case "$vmm" in
    passvm)
        set -- env RUST_LOG=info "$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cmdline "$cmd" \
            --cpus boot=1 --memory "size=${mem}M"
        [ "$dev" = 1 ] && set -- "$@" --device "$bdf"
        ;;
    qemu)
        set -- "$QEMU" -M q35 -accel kvm -cpu host -smp 1 -m "${mem}M" -nodefaults \
            -display none -serial stdio -no-reboot \
            -kernel "$L2_VMLINUX" -initrd "$L2_INITRD" -append "$cmd"
        [ "$dev" = 1 ] && set -- "$@" -device "vfio-pci,host=$bdf"
        ;;
    ch)
        # max_phys_bits=39: its 64-bit BARs stay inside the virtio-iommu's input range.
        set -- "$CH" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cmdline "$cmd" \
            --cpus boot=1,max_phys_bits=39 --memory "size=${mem}M" --serial tty --console off
        [ "$dev" = 1 ] && set -- "$@" --device "path=/sys/bus/pci/devices/$bdf"
        ;;
    *) bed_fail "unknown VMM '$vmm' (passvm, qemu, ch)" ;;
    esac
    rm -f /tmp/.init_ms /tmp/.init_up /tmp/.rc /tmp/.time
    local t0 t1
    t0="$(uptime_ms)"
    {
        busybox time -v -o /tmp/.time "$@" </dev/null 2>/tmp/.vmm
        echo "PASSVM-BENCH-RC $?"
    } | while IFS= read -r line; do
        case "$line" in
        *"PASSVM-L2: init up"*)
            [ -f /tmp/.init_ms ] || { uptime_ms >/tmp/.init_ms; echo "$line" >/tmp/.init_up; } ;;
        *"PASSVM-L2-RESULT"*) echo "L2| $line" ;;
        "PASSVM-BENCH-RC "*) echo "${line#PASSVM-BENCH-RC }" >/tmp/.rc ;;
        esac
    done
    t1="$(uptime_ms)"
    init_ms=-1
    [ -f /tmp/.init_ms ] && init_ms=$(($(cat /tmp/.init_ms) - t0))
    l2_init="$(sed -n 's/.*, uptime \([0-9.]*\).*/\1/p' /tmp/.init_up 2>/dev/null)"
    rss="$(bed_time_rss_kib /tmp/.time 2>/dev/null)"
    rc="$(cat /tmp/.rc 2>/dev/null || echo '?')"
    total_ms=$((t1 - t0))
    bed_report bench "peer=$vmm case=$case run=$run init_ms=$init_ms total_ms=$total_ms l2_init_s=${l2_init:--} rss_kib=${rss:-?} mem_mib=$mem rc=$rc"
    [ "$rc" = 0 ] || sed 's/^/VMM| /' /tmp/.vmm
    # passvm's own account of its start-up (info level: one line per phase).
    [ "$vmm" != passvm ] || grep -E "start-up|DMA-mapped|bus mastering|vfio: pinning" /tmp/.vmm | sed 's/^/VMM| /'
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
