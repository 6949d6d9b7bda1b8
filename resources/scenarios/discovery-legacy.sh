# Discovery on Debian's kernel (no CONFIG_IOMMUFD, so no cdevs): the disk "d0",
# bound to vfio-pci, named every way that does not need a cdev; each must
# resolve to the same device with the group backend, and asking for iommufd
# must fail saying why. Markers as in discovery-cdev.sh.

dry() { bed_dry_run "$@"; }

bdf="$(bed_bdf d0)"
bed_bind_vfio "$bdf"
group="$(bed_iommu_group "$bdf")"
bed_report bdf "$bdf"
bed_report group "$group"
bed_report cdev "$(bed_vfio_cdev "$bdf")"

for name in "/dev/vfio/pci/$bdf" "/sys/bus/pci/devices/$bdf" "/sys/bus/pci/devices/$bdf/" \
    "$bdf" "${bdf#0000:}" "/dev/vfio/$group"; do
    dry "$name"
done
dry "$bdf" --vfio-backend iommufd
exit 0
