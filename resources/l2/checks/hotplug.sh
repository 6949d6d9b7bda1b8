# The guest of the hot-plug scenario (resources/scenarios/hotplug.sh): it boots with no
# device on passvm's PCIe root ports and reports "hp_ready"; L1 then adds a disk through
# the API. Round 1: when a disk appears (L2's pciehp and virtio driver at work), its
# name is read and the disk check's line written ("hp_disk=ROUND DISK NAME BDF"), then
# the check waits for it to leave (L1's remove-device: "hp_gone=1"). Round 2: the disk
# comes back (added again) and is used the same way; init then reboots, ending the VM.
# With passvm.hp.mode=boot (the disk came with the VM, behind a root port) round 1 also
# resets the disk through its port's secondary bus reset and uses it again (hp_sbr).
# With passvm.hp.last_leaves=1 round 2 also waits for the disk to leave (the host's
# unbind takes it back) and reports "hp_after=alive" before the end.
# passvm.hp.mode=pair: L1 adds and removes two disks in turn, so this check follows the
# set of disks instead: each time it changes, every disk present is read from the
# device (caches dropped) and a disk that just arrived gets the check's line; the set is
# reported as "hp_set=NAME@BDF ..." (sorted; "none" when empty), and again every 5 s
# so L1 can tell L2 still runs. It returns when the power button is pressed (the
# ACPI GED's interrupt) and init powers off (passvm.end=poweroff).
last_leaves=0
mode=single
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    passvm.hp.last_leaves=1) last_leaves=1 ;;
    passvm.hp.mode=*) mode="${arg#passvm.hp.mode=}" ;;
    esac
done
bed_report hp_ready yes
if [ "$mode" = pair ]; then
    ged_count() { awk '/ACPI:Ged/ { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print n; found = 1 } END { if (!found) print -1 }' /proc/interrupts; }
    [ "$(ged_count)" -ge 0 ] || bed_fail "no ACPI:Ged line in /proc/interrupts: the GED driver did not bind"
    last=
    ticks=0
    while [ "$(ged_count)" -le 0 ]; do
        now=
        for d in $(bed_disks); do
            now="$now $d@$(basename "$(readlink -f "/sys/block/$d/device/..")")"
        done
        if [ "$now" != "$last" ] || [ "$ticks" -ge 25 ]; then
            echo 3 >/proc/sys/vm/drop_caches
            set=
            for e in $now; do
                d="${e%@*}"
                name="$(bed_disk_name "$d")"
                if [ -z "$name" ]; then
                    # A disk on its way out reads nothing for a moment before it goes.
                    sleep 1
                    [ -e "/sys/block/$d" ] || { now=; continue; }
                    bed_fail "$d has no name in sector 0"
                fi
                case " $last " in
                *" $e "*) ;;
                *)
                    printf 'PASSVM-L2-WROTE name=%s\n' "$name" |
                        dd of="/dev/$d" bs=512 seek=$BED_WRITE_OFFSET_SECTORS conv=notrunc,sync,fsync 2>/dev/null ||
                        bed_fail "write to $d ($name) failed"
                    ;;
                esac
                set="$set $name@${e#*@}"
            done
            set="$(echo $set | tr ' ' '\n' | sort | tr '\n' ' ')"
            set="${set% }"
            bed_report hp_set "${set:-none}"
            last="$now"
            ticks=0
        fi
        ticks=$((ticks + 1))
        sleep 0.2
    done
    bed_report hp_power pressed
    return 0
fi
# wait_disk TRIES WHY: until a disk is there (every 0.2 s), else fail with WHY.
wait_disk() {
    i=0
    until [ -n "$(bed_disks)" ]; do
        i=$((i + 1))
        [ "$i" -le "$1" ] || bed_fail "$2"
        sleep 0.2
    done
}
round=1
while [ "$round" -le 2 ]; do
    wait_disk 900 "no disk arrived in round $round"
    d="$(bed_disks | head -n 1)"
    name="$(bed_disk_name "$d")"
    [ -n "$name" ] || bed_fail "$d has no name in sector 0"
    printf 'PASSVM-L2-WROTE name=%s\n' "$name" |
        dd of="/dev/$d" bs=512 seek=$BED_WRITE_OFFSET_SECTORS conv=notrunc,sync,fsync 2>/dev/null ||
        bed_fail "write to $d failed in round $round"
    bed_report hp_disk "$round $d $name $(basename "$(readlink -f "/sys/block/$d/device/..")")"
    if [ "$round" = 1 ] && [ "$mode" = boot ]; then
        # The device's bus reset through passvm's root port: the driver lets go, the
        # function is reset by the port's secondary bus reset ("bus"), the driver
        # takes it again and the disk reads its name: "hp_sbr=RC METHODS NAME".
        pci="$(basename "$(readlink -f "/sys/block/$d/device/..")")"
        dev="/sys/bus/pci/devices/$pci"
        methods="$(cat "$dev/reset_method" 2>/dev/null | tr ' ' ,)"
        echo "$pci" >/sys/bus/pci/drivers/virtio-pci/unbind
        echo bus >"$dev/reset_method"
        echo 1 >"$dev/reset"
        rc=$?
        echo "$pci" >/sys/bus/pci/drivers/virtio-pci/bind
        wait_disk 150 "no disk after the bus reset"
        d="$(bed_disks | head -n 1)"
        echo 3 >/proc/sys/vm/drop_caches
        bed_report hp_sbr "$rc ${methods:-none} $(bed_disk_name "$d")"
    fi
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
