# passvm boots L2 directly and L2's `reboot -f` ends it with exit 0.
# Parameters (L1 kernel arguments, Scenario::l1_append):
#   passvm.l2kernel=vmlinux|bzImage   the entry: PVH (vmlinux) or the 64-bit boot protocol
#   passvm.l2cpus=N                   --cpus boot=N
#   passvm.l2mem=SIZE                 --memory size=SIZE
#   passvm.l2end=reboot|poweroff      how L2's init ends it (reboot -f or poweroff -f)
#   passvm.l2args=ARG                 one more L2 kernel argument (e.g. reboot=acpi)
#   passvm.log=FILTER                 passvm's RUST_LOG (e.g. info)
#   passvm.vmargs=ARGS                more passvm options, +-separated (e.g.
#                                     --pcie-ports+2)
# L2 runs resources/l2/checks/vm-boot.sh (nproc, memory); the host-side test asserts on
# its markers and on passvm's exit status (marker passvm_rc).
kernel_name="$(bed_cmdline_arg passvm.l2kernel || echo vmlinux)"
cpus="$(bed_cmdline_arg passvm.l2cpus || echo 1)"
mem="$(bed_cmdline_arg passvm.l2mem || echo 256M)"
end="$(bed_cmdline_arg passvm.l2end || echo reboot)"
extra="$(bed_cmdline_arg passvm.l2args || true)"
log="$(bed_cmdline_arg passvm.log || true)"
vmargs="$(bed_cmdline_arg passvm.vmargs | tr '+' ' ')"
[ -n "$log" ] && export RUST_LOG="$log"
case "$kernel_name" in
vmlinux) kernel="$L2_VMLINUX" ;;
bzImage) kernel="$L2_BZIMAGE" ;;
*) bed_fail "passvm.l2kernel must be vmlinux or bzImage, not '$kernel_name'" ;;
esac
echo "starting passvm: $kernel_name, $cpus vCPU(s), $mem"
bed_passvm --kernel "$kernel" --initramfs "$L2_INITRD" \
    --cmdline "$(bed_l2_cmdline vm-boot "passvm.end=$end${extra:+ $extra}")" --cpus "boot=$cpus" --memory "size=$mem" \
    $vmargs
rc=$?
[ "$rc" -eq 0 ] || bed_fail "passvm exited with $rc"
