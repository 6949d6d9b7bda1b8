# Benchmark (figures printed, not asserted): for each L2 entry (vmlinux/PVH, bzImage/64-bit)
# and vCPU count, RUNS runs (L1 argument passvm.bench_runs=N, default 3) of passvm booting L2
# to its init and back out through reboot -f. One marker per run:
#   bench=<kernel> cpus=<n> run=<i> init_ms=<passvm start -> L2 init's first line>
#         total_ms=<passvm start -> passvm exit> rss_kib=<passvm's peak RSS> rc=<exit status>
# Times come from L1's /proc/uptime (10 ms resolution); the peak RSS is the kernel's
# ru_maxrss of the passvm process (busybox time -v, corrected: bed_time_rss_kib), which
# includes the guest RAM L2 touched.
runs="$(bed_cmdline_arg passvm.bench_runs || echo 3)"
mem="$(bed_cmdline_arg passvm.l2mem || echo 256M)"
cmdline="$(bed_l2_cmdline "") quiet"
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

for kernel_name in vmlinux bzImage; do
    case "$kernel_name" in vmlinux) kernel="$L2_VMLINUX" ;; *) kernel="$L2_BZIMAGE" ;; esac
    for cpus in 1 2; do
        i=1
        while [ "$i" -le "$runs" ]; do
            rm -f /tmp/.init_ms
            t0="$(uptime_ms)"
            {
                busybox time -v -o /tmp/.time "$PASSVM" --kernel "$kernel" --initramfs "$L2_INITRD" \
                    --cmdline "$cmdline" --cpus "boot=$cpus" --memory "size=$mem" </dev/null 2>/tmp/.vmm
                echo "PASSVM-BENCH-RC $?"
            } | while IFS= read -r line; do
                case "$line" in
                *"PASSVM-L2: init up"*) [ -f /tmp/.init_ms ] || uptime_ms >/tmp/.init_ms ;;
                "PASSVM-BENCH-RC "*) echo "${line#PASSVM-BENCH-RC }" >/tmp/.rc ;;
                esac
            done
            t1="$(uptime_ms)"
            init_ms=-1
            [ -f /tmp/.init_ms ] && init_ms=$(($(cat /tmp/.init_ms) - t0))
            rss="$(bed_time_rss_kib /tmp/.time)"
            bed_report bench "$kernel_name cpus=$cpus run=$i init_ms=$init_ms total_ms=$((t1 - t0)) rss_kib=${rss:-?} rc=$(cat /tmp/.rc)"
            [ "$(cat /tmp/.rc)" = 0 ] || sed 's/^/VMM| /' /tmp/.vmm
            i=$((i + 1))
        done
    done
done
