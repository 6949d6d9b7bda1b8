# The read figures of the side-by-side benchmark (peers-bench.sh), on the first
# virtio-blk disk: 1 MiB sequential reads (marker read_ms) and 4 KiB reads, one
# interrupt each (marker read4k_ms), all O_DIRECT (resources/lib/read-bench.sh).
d="$(bed_disks | head -n 1)"
[ -n "$d" ] || bed_fail "no virtio-blk disk in L2"
bed_read_bench "$d" read_ms
bed_read4k_bench "$d" read4k_ms
