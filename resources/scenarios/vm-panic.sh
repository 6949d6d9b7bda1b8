# An L2 kernel that panics ends passvm with a non-zero status and the reason: L2's init
# is resources/l2/checks/vm-panic.sh, which exits, so the kernel panics and (panic=-1)
# reboots at once; passvm must report the panic it saw on the console, not the reboot.
echo "starting passvm with an L2 init that exits"
bed_passvm --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" \
    --cmdline "console=ttyS0 reboot=k panic=-1 rdinit=/checks/vm-panic.sh" --memory size=128M
rc=$?
[ "$rc" -ne 0 ] || bed_fail "passvm exited 0 although L2 panicked"
exit 0
