# passvm's guest reached userspace: report the CPUs it brought up (nproc counts the
# CPUs this process may run on, i.e. the ones the kernel onlined from the MP table)
# and the memory it was given. init then prints the result line and runs reboot -f.
# L2's own uptime when its init ran this check (ms): its boot time, passvm's platform
# included (the bed's benchmark compares it across VMMs and command lines).
bed_report uptime_ms "$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)"
bed_report nproc "$(nproc)"
bed_report cpus_online "$(cat /sys/devices/system/cpu/online)"
bed_report mem_kib "$(awk '/MemTotal/ { print $2 }' /proc/meminfo)"
bed_report pci "$(ls /sys/bus/pci/devices | tr '\n' ' ')"
# PCI bridges (class 0604: passvm's root ports) with their drivers, and the hot-plug
# slots pciehp registered (named by physical slot number).
for d in /sys/bus/pci/devices/*; do
    case "$(cat "$d/class")" in 0x0604*) ;; *) continue ;; esac
    drv=none
    [ -e "$d/driver" ] && drv="$(basename "$(readlink "$d/driver")")"
    bed_report bridge "${d##*/} $drv secondary=$(cat "$d/subordinate_bus_number" 2>/dev/null)"
done
bed_report pci_slots "$(echo $(ls /sys/bus/pci/slots 2>/dev/null))"
# The timer the kernel ticks with: "lapic-deadline" when passvm offered the
# TSC-deadline timer (CPUID.1:ECX[24]) and KVM emulates it.
bed_report clockevent "$(cat /sys/devices/system/clockevents/clockevent0/current_device 2>/dev/null || echo none)"
# The ACPI tables the kernel found (passvm's src/acpi/), by signature (the
# directory also holds "data" and "dynamic", which are not tables).
bed_report acpi_tables "$(echo $(ls /sys/firmware/acpi/tables 2>/dev/null | grep -E '^[A-Z0-9]{4}$'))"
