# The guest of the control API scenario (resources/scenarios/api-control.sh): reports
# every PCI function it sees (marker l2_pci="BDF VENDOR:DEVICE"), so the host side can
# compare them with what vm.info says, then waits for the ACPI power button as
# vm-powerbtn does (markers powerbtn_device, powerbtn=ready, ged_irqs); init then powers
# off (passvm.end=poweroff), as a userspace acting on KEY_POWER would.
for d in /sys/bus/pci/devices/*; do
    [ -e "$d/vendor" ] || continue
    bed_report l2_pci "${d##*/} $(sed 's/^0x//' "$d/vendor"):$(sed 's/^0x//' "$d/device")"
done
. /checks/vm-powerbtn.sh
