# Sequential read throughput of a block device, the same measurement in L1 (pt-bench
# reads the disk directly) and in L2 (pt-read reads it passed through): images.sh
# appends this file to both levels' helper libraries.
#
# bed_read_bench DEV MARKER: three measurements, each the whole 16 MiB disk read 8 times
# with O_DIRECT (128 MiB); marker MARKER=<milliseconds> per measurement (/proc/uptime,
# 10 ms resolution).
bed_read_bench() {
    for rb_i in 1 2 3; do
        rb_t0="$(cut -d' ' -f1 /proc/uptime)"
        for rb_j in 1 2 3 4 5 6 7 8; do
            dd if="/dev/$1" of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null ||
                bed_fail "read /dev/$1 (measurement $rb_i, pass $rb_j)"
        done
        rb_t1="$(cut -d' ' -f1 /proc/uptime)"
        bed_report "$2" "$(awk -v a="$rb_t0" -v b="$rb_t1" 'BEGIN { printf "%d", (b - a) * 1000 }')"
    done
}

# bed_read4k_bench DEV MARKER: the interrupt path: three measurements, each 4096 reads
# of 4 KiB with O_DIRECT (the disk's first 16 MiB, one request and one completion
# interrupt per read); marker MARKER=<milliseconds> per measurement.
bed_read4k_bench() {
    for rb_i in 1 2 3; do
        rb_t0="$(cut -d' ' -f1 /proc/uptime)"
        dd if="/dev/$1" of=/dev/null bs=4k count=4096 iflag=direct 2>/dev/null ||
            bed_fail "4 KiB reads of /dev/$1 (measurement $rb_i)"
        rb_t1="$(cut -d' ' -f1 /proc/uptime)"
        bed_report "$2" "$(awk -v a="$rb_t0" -v b="$rb_t1" 'BEGIN { printf "%d", (b - a) * 1000 }')"
    done
}
