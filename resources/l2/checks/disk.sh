# Every passed-through virtio-blk disk: read the launcher's name from sector 0,
# write "PASSVM-L2-WROTE name=NAME" at 1 MiB, read it back past the page cache.
disks="$(bed_disks)"
[ -n "$disks" ] || bed_fail "no passed-through disk in L2 (is the device passed through?)"
for d in $disks; do
    name="$(bed_disk_name "$d")"
    [ -n "$name" ] || bed_fail "/dev/$d has no PASSVM-DISK header"
    bed_report disk "$d $name"
    printf 'PASSVM-L2-WROTE name=%s\n' "$name" |
        dd of="/dev/$d" bs=512 seek=$BED_WRITE_OFFSET_SECTORS conv=notrunc,sync,fsync 2>/dev/null ||
        bed_fail "write to /dev/$d failed"
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
    back="$(dd if="/dev/$d" bs=512 skip=$BED_WRITE_OFFSET_SECTORS count=1 iflag=direct 2>/dev/null | head -n 1)"
    [ "$back" = "PASSVM-L2-WROTE name=$name" ] || bed_fail "/dev/$d: read back '$back'"
    bed_report wrote "$d $name"
done
