# Discovery on the bed's kernel (iommufd + VFIO cdevs): the disk "d0", bound to
# vfio-pci, named every way --device accepts; each must resolve to the same
# device with the iommufd backend. Also a stale cdev node, an mtty mdev by its
# two names, and names that must be refused. tests/nested_discovery.rs asserts
# on the "plan" markers: "NAME|rc=N|<the plan's device line or the error>".

dry() { bed_dry_run "$@"; }

bdf="$(bed_bdf d0)"
bed_bind_vfio "$bdf"
cdev="$(bed_vfio_cdev "$bdf")"
[ -n "$cdev" ] || bed_fail "$bdf has no VFIO cdev on this kernel"
group="$(bed_iommu_group "$bdf")"
bed_report bdf "$bdf"
bed_report cdev "$cdev"
bed_report group "$group"

for name in "$cdev" "/dev/vfio/pci/$bdf" "/sys/bus/pci/devices/$bdf" \
    "/sys/bus/pci/devices/$bdf/" "$bdf" "${bdf#0000:}" "/dev/vfio/$group"; do
    dry "$name"
done
dry "$bdf" --vfio-backend group

# A node with the cdev major and a minor no device has: stale, refused.
major="$(cut -d: -f1 "/sys/bus/pci/devices/$bdf/vfio-dev/${cdev##*/}/dev")"
mknod /dev/vfio/devices/vfio77 c "$major" 77
dry /dev/vfio/devices/vfio77
rm -f /dev/vfio/devices/vfio77

# A mediated device, by its sysfs path and by its type/name pair.
mdev="$(bed_mtty_create)"
bed_report mdev "${mdev##*/}"
dry "$mdev"
dry "/dev/vfio/mdev/${mdev##*/}"

# Not devices, or nothing there.
dry /dev/vfio/vfio
dry 0000:00:1f.7
dry not-a-device
exit 0
