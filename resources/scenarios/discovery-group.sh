# Two functions of one multifunction slot share an IOMMU group. With only "a"
# on vfio-pci the group is not viable: planning and starting must both refuse
# with exit code 2, naming "b" and its driver. With both bound, "a" plans, and
# so does the whole group (two devices).

dry() {
    bed_dry_run "$@"
    bed_report plan_devices "$1|$(echo "$BED_DRY_OUT" | grep -c -F -- ' -> ')"
}

a="$(bed_bdf a)"
b="$(bed_bdf b)"
ga="$(bed_iommu_group "$a")"
bed_report group_a "$ga"
bed_report group_b "$(bed_iommu_group "$b")"
bed_report driver_b "$(bed_driver "$b")"
bed_bind_vfio "$a"

dry "$a"
out="$("$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory size=256M \
    --cmdline "$(bed_l2_cmdline boot)" --device "$a" 2>&1 </dev/null)"
rc=$?
echo "$out" | sed 's/^/    /'
bed_report start "rc=$rc|$(echo "$out" | grep -m 1 -F "$b")"

bed_bind_vfio "$b"
dry "$a"
dry "/dev/vfio/$ga"
exit 0
