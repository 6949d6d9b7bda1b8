# L2 reached userspace: report what it sees (CPUs, memory, PCI devices).
bed_report cpus "$(grep -c ^processor /proc/cpuinfo)"
bed_report mem_kib "$(awk '/MemTotal/ { print $2 }' /proc/meminfo)"
for d in /sys/bus/pci/devices/*; do
    [ -e "$d" ] || continue
    bed_report pci "$(basename "$d") $(cat "$d/vendor"):$(cat "$d/device")"
done
