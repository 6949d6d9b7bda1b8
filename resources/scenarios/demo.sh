# The README demo: pass the disk "d0" through to L2 with passvm. L2 reads the
# disk's header and writes to it (resources/l2/checks/disk.sh).
bdf="$(bed_bdf d0)"
bed_bind_vfio "$bdf"
cdev="$(bed_vfio_cdev "$bdf")"
# The cdev (iommufd) when the kernel has one, else the group.
device="${cdev:-/dev/vfio/$(bed_iommu_group "$bdf")}"
echo "starting passvm: L2 with 2 vCPUs, 256 MiB and $bdf passed through as $device"
bed_passvm --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" \
    --cmdline "$(bed_l2_cmdline disk)" --cpus boot=2 --memory size=256M --device "$device"
