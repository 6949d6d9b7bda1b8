# The launcher's device kinds as L1 sees them: for each named device its
# address, IDs, IOMMU group and reset methods; then an mtty mdev.
# tests/nested_bed.rs checks that each kind has the property it promises.
for name in $(bed_cmdline_arg passvm.devices | tr ',' '\n' | cut -d@ -f1); do
    bdf="$(bed_bdf "$name")"
    dev="/sys/bus/pci/devices/$bdf"
    [ -e "$dev" ] || bed_fail "$name: no PCI device at $bdf"
    # A device no driver has probed has no IOMMU group yet (the virtio-iommu is
    # attached at probe time): binding vfio-pci gives it one.
    [ -e "$dev/iommu_group" ] || bed_bind_vfio "$bdf" >/dev/null
    # reset_method is hidden when the device has no reset method at all.
    reset="$(cat "$dev/reset_method" 2>/dev/null)"
    bed_report dev "$name $bdf $(sed s/0x// "$dev/vendor"):$(sed s/0x// "$dev/device") group=$(bed_iommu_group "$bdf") reset=$(echo ${reset:-none} | tr ' ' ,)"
    # BARs 0-5 as i<bytes> (I/O), m<bytes> (memory) or - (none), from the
    # start/end/flags lines of "resource" (IORESOURCE_IO 0x100, _MEM 0x200).
    bars="$(head -n 6 "$dev/resource" | while read -r start end flags; do
        if [ $((flags & 0x100)) -ne 0 ]; then printf 'i%d ' $((end - start + 1))
        elif [ $((flags & 0x200)) -ne 0 ]; then printf 'm%d ' $((end - start + 1))
        else printf -- '- '; fi
    done)"
    bed_report bars "$name $bars"
    [ -e "$dev/sriov_totalvfs" ] && bed_report sriov "$name $(cat "$dev/sriov_totalvfs")"
done
mdev="$(bed_mtty_create)"
[ -e "$mdev" ] || bed_fail "mtty create did not make $mdev"
bed_report mdev "mtty group=$(basename "$(readlink "$mdev/iommu_group")")"
