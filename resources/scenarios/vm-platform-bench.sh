# Benchmark (figures printed, not asserted): what the guest platform costs L2's boot.
# The same bzImage and initramfs, 1 vCPU, 256 MiB, booted RUNS times (L1 argument
# passvm.bench_runs=N, default 3) with a user's plain command line, once as passvm
# boots it (ACPI tables) and once with acpi=off (the MP-table PC passvm gave guests
# before), so the difference is the platform's. One marker per run:
#   platform=<acpi|acpi=off> run=<i> l2_init_ms=<L2's own uptime at init>
#            total_ms=<passvm start -> exit, L1's clock> i8042_probe=<0|1> rc=<status>
runs="$(bed_cmdline_arg passvm.bench_runs || echo 3)"
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

for mode in acpi acpi=off; do
    extra=""
    [ "$mode" = acpi ] || extra=" $mode"
    i=1
    while [ "$i" -le "$runs" ]; do
        t0="$(uptime_ms)"
        "$PASSVM" --kernel "$L2_BZIMAGE" --initramfs "$L2_INITRD" \
            --cmdline "console=ttyS0 reboot=k panic=-1$extra" --cpus boot=1 --memory size=256M \
            </dev/null >/tmp/.l2 2>/tmp/.vmm
        rc=$?
        t1="$(uptime_ms)"
        init="$(sed -n 's/.*PASSVM-L2: init up.*uptime \([0-9.]*\).*/\1/p' /tmp/.l2 | head -n 1)"
        init_ms=-1
        [ -n "$init" ] && init_ms="$(awk -v u="$init" 'BEGIN { printf "%d", u * 1000 }')"
        probe=0
        grep -q "i8042: Probing ports directly" /tmp/.l2 && probe=1
        bed_report platform "$mode run=$i l2_init_ms=$init_ms total_ms=$((t1 - t0)) i8042_probe=$probe rc=$rc"
        [ "$rc" = 0 ] || sed 's/^/VMM| /' /tmp/.vmm
        i=$((i + 1))
    done
done
