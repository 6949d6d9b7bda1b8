# A passed-through virtio-blk seen from L2 (issue 5 scenarios, resources/scenarios/pt-blk.sh).
# 1. which driver L2 bound to each virtio PCI function (virtio-pci; virtio_blk gives vdX);
# 2. the `disk` check: read the name L0 wrote in sector 0, write + read back at 1 MiB;
# 3. "PASSVM-PT-RUN n=N name=NAME" at 2 MiB (N from passvm.run=N), so the host can tell
#    which passvm run wrote last;
# 4. every virtio interrupt line of /proc/interrupts as "irq=COUNT CHIP HWIRQ-TYPE NAME"
#    (COUNT summed over CPUs): PCI-MSIX-... with MSI-X, IO-APIC ...-fasteoi with INTx.
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1af4 ] || continue
    drv=none
    [ -e "$d/driver" ] && drv="$(basename "$(readlink "$d/driver")")"
    bed_report driver "$(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") $drv"
done
. /checks/disk.sh
run=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in passvm.run=*) run="${arg#passvm.run=}" ;; esac
done
for d in $(bed_disks); do
    name="$(bed_disk_name "$d")"
    printf 'PASSVM-PT-RUN n=%s name=%s\n' "$run" "$name" |
        dd of="/dev/$d" bs=512 seek=$((BED_WRITE_OFFSET_SECTORS * 2)) conv=notrunc,sync,fsync 2>/dev/null ||
        bed_fail "run marker write to /dev/$d failed"
    bed_report run_marker "$d $run"
done
bed_report_irqs '/virtio/'
