# Every device passvm passed through, driven by L2's own driver, by kind
# (resources/scenarios/pt-blk.sh with passvm.pt.check=pt-dev):
# - every PCI endpoint: "driver=BDF VVVV:DDDD DRIVER", "irqmode=BDF MODE"
#   (msix, msi or intx, from the msi_irqs and irq sysfs files),
#   with MSI-X "msix_used=BDF VECTORS TABLE-SIZE" (the vectors Linux allocated and
#   requested, of the table's entries) and
#   "extcaps=BDF SIZE ID..." (config space size, extended capability IDs) and,
#   with a ROM BAR, "rom=BDF SIZE MD5 HEAD" (the ROM read through sysfs);
# - disks of any kind (virtio-blk vdX, NVMe nvmeXnY, SATA sdX): the disk check;
# - a PCI 16550 (1b36:0002, 8250_pci): PASSVM-L2-UART and the tty's name are
#   written to it, so the host finds them in the chardev's file;
# - ivshmem-plain (1af4:1110, no driver: written through /dev/mem): the words
#   "PVM-" "L2OK" at IVSHMEM_OFFSET in BAR 2, read back ("ivshmem=BDF BAR-SIZE");
# - an igb virtual function (8086:10ca, igbvf): up, 10.0.2.15/24, ping 10.0.2.2
#   (QEMU's user network), "ping=IFACE MAC RECEIVED".
# Then every interrupt line of the passed-through drivers ("irq=..."; a UART's
# while its tty is open).

# Past 4 GiB inside the BAR, so a 32-bit truncation anywhere shows.
IVSHMEM_OFFSET=$((6 * 1024 * 1024 * 1024 + 4096))

for d in /sys/bus/pci/devices/*; do
    class="$(cat "$d/class")"
    # Bridges (the host bridge passvm emulates) are not passed-through devices.
    case "$class" in 0x06*) continue ;; esac
    bdf="$(basename "$d")"
    id="$(cat "$d/vendor"):$(cat "$d/device")"
    drv=none
    [ -e "$d/driver" ] && drv="$(basename "$(readlink "$d/driver")")"
    bed_report driver "$bdf $id $drv"
    # Each file of msi_irqs/ names its vector's kind: "msi" or "msix".
    mode=intx
    if [ -n "$(ls "$d/msi_irqs" 2>/dev/null)" ]; then
        mode=msi
        grep -q msix "$d"/msi_irqs/* && mode=msix
    fi
    bed_report irqmode "$bdf $mode"
    if [ "$mode" = msix ]; then
        # The MSI-X capability (ID 0x11) in the standard list: its control word's
        # low 11 bits are the table size minus one.
        p=$(od -An -tu1 -j52 -N1 "$d/config" | tr -d ' ') n=0 size=?
        while [ "${p:-0}" -ge 64 ] && [ "$n" -lt 48 ]; do
            set -- $(od -An -tu1 -j"$p" -N4 "$d/config")
            [ "$1" = 17 ] && { size=$(((($4 << 8 | $3) & 0x7ff) + 1)); break; }
            p=$2 n=$((n + 1))
        done
        bed_report msix_used "$bdf $(ls "$d/msi_irqs" | wc -l) $size"
    fi
    # Config space size and extended capability IDs (through passvm's ECAM window).
    bed_report extcaps "$bdf $(bed_ext_caps "$d")"
    # The expansion ROM through passvm's ROM BAR, if the guest has one.
    rom="$(bed_rom_sum "$d")"
    [ -z "$rom" ] || bed_report rom "$bdf $rom"

    case "$id" in
    0x1b36:0x0002)
        # The tty hangs below the function, through the serial core's port devices.
        for t in $(find "$d/" -maxdepth 4 -path '*/tty/ttyS*'); do
            tty="${t##*/}"
            # The port's IRQ is requested while the tty is open: count it then,
            # after the transmitter has drained (its interrupts are the count).
            exec 5>"/dev/$tty" || bed_fail "cannot open /dev/$tty"
            printf 'PASSVM-L2-UART tty=%s\n' "$tty" >&5 || bed_fail "write to /dev/$tty failed"
            sleep 1
            bed_report_irqs "\$NF == \"$tty\""
            exec 5>&-
            bed_report uart "$bdf $tty"
        done
        ;;
    0x1af4:0x1110)
        # BAR 2 is the third line of "resource": start end flags.
        set -- $(sed -n 3p "$d/resource")
        start=$(($1)) end=$(($2))
        size=$((end - start + 1))
        [ "$start" -ne 0 ] && [ "$size" -gt "$IVSHMEM_OFFSET" ] ||
            bed_fail "ivshmem $bdf: BAR 2 is $1-$2, too small for offset $IVSHMEM_OFFSET"
        echo 1 >"$d/enable" 2>/dev/null
        addr=$((start + IVSHMEM_OFFSET))
        devmem "$addr" 32 0x2d4d5650 && devmem $((addr + 4)) 32 0x4b4f324c ||
            bed_fail "devmem write at $(printf 0x%x "$addr") failed"
        back="$(devmem "$addr" 32) $(devmem $((addr + 4)) 32)"
        [ "$back" = "0x2D4D5650 0x4B4F324C" ] || bed_fail "ivshmem $bdf: read back '$back'"
        bed_report ivshmem "$bdf $size $(printf 0x%x "$start")"
        ;;
    0x8086:0x10ca)
        for n in "$d"/net/*; do
            [ -e "$n" ] || bed_fail "igbvf $bdf has no network interface"
            ifc="${n##*/}"
            ip link set dev "$ifc" up && ip addr add 10.0.2.15/24 dev "$ifc" ||
                bed_fail "cannot configure $ifc"
            # The VF's link follows the PF's: give it a few seconds to come up.
            got="$(ping -c 5 -W 3 10.0.2.2 2>&1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')"
            bed_report ping "$ifc $(cat "$n/address") ${got:-0}"
            [ "${got:-0}" -gt 0 ] || bed_fail "no ping reply through $ifc"
        done
        ;;
    esac
done

if [ -n "$(bed_disks)" ]; then
    . /checks/disk.sh
fi
bed_report_irqs '/nvme|ahci|eth|virtio/'
