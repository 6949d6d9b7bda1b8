# Issue 5: an mtty mediated device (a 2-port PCI UART, I/O-port BARs, INTx whose VFIO
# driver cannot unmask through an eventfd) created in L1 and passed to L2, where 8250_pci
# drives it. Parameters: passvm.pt.name=dev|sysfs (--device /dev/vfio/mdev/<uuid>, the
# default, or /sys/bus/mdev/devices/<uuid>). L2 runs resources/l2/checks/pt-uart.sh.
export RUST_LOG="$(bed_cmdline_arg passvm.pt.log || echo info)"
form="$(bed_cmdline_arg passvm.pt.name || echo dev)"
path="$(bed_mtty_create 2)"
uuid="${path##*/}"
bed_report mdev "$uuid"
case "$form" in
dev) name="/dev/vfio/mdev/$uuid" ;;
sysfs) name="$path" ;;
*) bed_fail "passvm.pt.name must be dev or sysfs, not '$form'" ;;
esac
# Two ports: ttyS0 is the console; nr_uarts=3 leaves two slots for the mtty ports.
bed_passvm --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory size=256M \
    --cmdline "$(bed_l2_cmdline pt-uart "8250.nr_uarts=3")" --device "$name"
rc=$?
[ "$rc" -eq 0 ] || bed_fail "passvm exited with $rc"
echo 1 >"$path/remove" || bed_fail "cannot remove the mdev"
