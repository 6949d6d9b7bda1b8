# Helpers for L2 checks (busybox sh), sourced before resources/l2/checks/NAME.sh.

# A marker the host-side test reads: appears as "L2| BED key=value" in the log.
bed_report() { echo "BED $1=$2"; }

# Stop the check with a reason; the init reports rc=1.
bed_fail() { echo "BED fail=$*"; exit 1; }

# Disks the launcher prepared start with "PASSVM-DISK name=NAME" in sector 0;
# writes from L2 go to sector 2048 (1 MiB), where the host test looks for them.
BED_WRITE_OFFSET_SECTORS=2048

# Block devices of passed-through disks in this guest: virtio-blk (vda ...),
# NVMe namespaces (nvme0n1 ...), SATA (sda ...).
bed_disks() { ls /sys/block 2>/dev/null | grep -E '^(vd[a-z]+|nvme[0-9]+n[0-9]+|sd[a-z]+)$' || true; }

# The name the launcher gave a disk, from its first sector.
bed_disk_name() {
    dd if="/dev/$1" bs=512 count=1 2>/dev/null | head -n 1 | sed -n 's/^PASSVM-DISK name=//p'
}

# Report "BED irq=COUNT CHIP HWIRQ-TYPE NAME" for each line of /proc/interrupts that
# the awk pattern $1 selects (e.g. '/virtio/', '$NF == "ttyS1"'); COUNT is summed
# over the CPUs.
bed_report_irqs() {
    awk "$1"' {
        c = 0
        for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) c += $i
        rest = ""
        for (; i <= NF; i++) rest = rest " " $i
        print "BED irq=" c rest
    }' /proc/interrupts
}
