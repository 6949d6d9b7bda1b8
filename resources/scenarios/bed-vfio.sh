# The bed itself: bind the disk "d0" to vfio-pci and report what a VMM would
# find. On the bed's kernel that is a cdev + /dev/iommu (and the group); on
# Debian's kernel (no CONFIG_IOMMUFD) the group only. tests/nested_bed.rs
# asserts on the markers.
bdf="$(bed_bdf d0)"
driver="$(bed_driver "$bdf")"
bed_report driver_before "$bdf ${driver:-none}"
bed_bind_vfio "$bdf"
cdev="$(bed_vfio_cdev "$bdf")"
bed_report sysfs_cdev "$bdf ${cdev:-none}"
bed_report_host
