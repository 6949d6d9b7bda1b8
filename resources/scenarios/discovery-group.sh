# Two functions of one multifunction slot share an IOMMU group. With only "a"
# on vfio-pci the group is not viable: planning and starting must both refuse
# with exit code 2, naming "b" and its driver. With both bound, "a" plans, and
# so does the whole group (two devices).

dry() {
    name="$1"
    shift
    out="$("$PASSVM" --kernel "$L2_VMLINUX" --memory size=256M --dry-run --device "$name" "$@" 2>&1)"
    rc=$?
    echo "$out" | sed 's/^/    /'
    line="$(echo "$out" | grep -F -- ' -> ' | head -n 1)"
    [ -n "$line" ] || line="$(echo "$out" | grep -F 'passvm' | head -n 1)"
    bed_report plan "$name|rc=$rc|$line"
    bed_report plan_devices "$name|$(echo "$out" | grep -c -F -- ' -> ')"
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
