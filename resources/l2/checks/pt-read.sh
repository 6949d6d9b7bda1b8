# Sequential read throughput of the first virtio-blk disk in L2 (the pt-bench scenario):
# three measurements, each the whole 16 MiB disk read 8 times with O_DIRECT (128 MiB);
# marker read_ms per measurement (/proc/uptime, 10 ms resolution).
d="$(bed_disks | head -n 1)"
[ -n "$d" ] || bed_fail "no virtio-blk disk in L2"
for i in 1 2 3; do
    t0="$(cut -d' ' -f1 /proc/uptime)"
    for j in 1 2 3 4 5 6 7 8; do
        dd if="/dev/$d" of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null || bed_fail "read /dev/$d"
    done
    t1="$(cut -d' ' -f1 /proc/uptime)"
    bed_report read_ms "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')"
done
