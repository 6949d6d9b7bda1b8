# The guest of the hot-plug scenario (resources/scenarios/hotplug.sh): it boots with no
# device on passvm's PCIe root ports and reports "hp_ready"; L1 then adds a disk through
# the API. Round 1: when a disk appears (L2's pciehp and virtio driver at work), its
# name is read and the disk check's line written ("hp_disk=ROUND DISK NAME BDF"), then
# the check waits for it to leave (L1's remove-device: "hp_gone=1"). Round 2: the disk
# comes back (added again) and is used the same way; init then reboots, ending the VM.
# With passvm.hp.last_leaves=1 round 2 also waits for the disk to leave (the host's
# unbind takes it back) and reports "hp_after=alive" before the end.
last_leaves=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in passvm.hp.last_leaves=1) last_leaves=1 ;; esac
done
bed_report hp_ready yes
round=1
while [ "$round" -le 2 ]; do
    i=0
    until [ -n "$(bed_disks)" ]; do
        i=$((i + 1))
        [ "$i" -le 900 ] || bed_fail "no disk arrived in round $round"
        sleep 0.2
    done
    d="$(bed_disks | head -n 1)"
    name="$(bed_disk_name "$d")"
    [ -n "$name" ] || bed_fail "$d has no name in sector 0"
    printf 'PASSVM-L2-WROTE name=%s\n' "$name" |
        dd of="/dev/$d" bs=512 seek=$BED_WRITE_OFFSET_SECTORS conv=notrunc,sync,fsync 2>/dev/null ||
        bed_fail "write to $d failed in round $round"
    bed_report hp_disk "$round $d $name $(basename "$(readlink -f "/sys/block/$d/device/..")")"
    [ "$round" = 2 ] && [ "$last_leaves" = 0 ] && break
    i=0
    while [ -e "/sys/block/$d" ]; do
        i=$((i + 1))
        [ "$i" -le 900 ] || bed_fail "$d did not leave in round $round"
        sleep 0.2
    done
    bed_report hp_gone "$round"
    round=$((round + 1))
done
[ "$last_leaves" = 1 ] && bed_report hp_after alive
true
