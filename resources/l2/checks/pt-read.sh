# Sequential read throughput of the first virtio-blk disk in L2 (the pt-bench scenario):
# bed_read_bench (resources/lib/read-bench.sh), marker read_ms per measurement.
d="$(bed_disks | head -n 1)"
[ -n "$d" ] || bed_fail "no virtio-blk disk in L2"
bed_read_bench "$d" read_ms
