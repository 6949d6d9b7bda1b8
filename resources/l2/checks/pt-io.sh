# Writes to every passed-through disk until the VMM is killed from outside (pt-blk.sh
# with passvm.pt.sigkill=1): "io=started" once the first writes reached the disks,
# then direct writes in a loop, 1 MiB at a time over 8-16 MiB of the bed's 16 MiB disks
# (away from the name in sector 0 and the disk check's line at 1 MiB, which the next
# run reads and writes).
disks="$(bed_disks)"
[ -n "$disks" ] || bed_fail "no disk to write to"
n=0
while :; do
    for d in $disks; do
        dd if=/dev/urandom of="/dev/$d" bs=64k count=16 seek=$((128 + 16 * (n % 8))) \
            oflag=direct conv=notrunc 2>/dev/null || bed_fail "write to $d failed"
    done
    n=$((n + 1))
    [ "$n" = 2 ] && bed_report io started
done
