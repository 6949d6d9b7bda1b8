# Issue 5: L0's virtio-blk disks passed through by passvm to L2, driven by L2's own
# virtio driver. Every disk the launcher attached (passvm.devices) is bound to vfio-pci
# and given to one passvm, in passvm.devices order.
# Parameters (L1 kernel arguments, Scenario::l1_append):
#   passvm.pt.backend=auto|iommufd|group  --vfio-backend (default auto)
#   passvm.pt.name=cdev|bdf|sysfs         how --device names a disk (default cdev when
#                                         the kernel has one, else bdf)
#   passvm.pt.nomsi=1                     boot L2 with pci=nomsi (the INTx path)
#   passvm.pt.runs=N                      run passvm N times in a row (default 1); L2's
#                                         `reboot -f` ends each run
# L2 runs resources/l2/checks/pt-blk.sh. Markers: passvm_rc/passvm_ms per run,
# run="N rc=RC", after="BDF DRIVER" (the disk's L1 driver once passvm is gone).
export RUST_LOG=info
backend="$(bed_cmdline_arg passvm.pt.backend || echo auto)"
form="$(bed_cmdline_arg passvm.pt.name || echo cdev)"
runs="$(bed_cmdline_arg passvm.pt.runs || echo 1)"
l2extra=""
[ "$(bed_cmdline_arg passvm.pt.nomsi)" = 1 ] && l2extra="pci=nomsi"
bed_report_host

set --
bdfs=""
for entry in $(bed_cmdline_arg passvm.devices | tr ',' ' '); do
    bdf="${entry#*@}"
    bed_bind_vfio "$bdf"
    bdfs="$bdfs $bdf"
    name="$bdf"
    case "$form" in
    cdev) name="$(bed_vfio_cdev "$bdf")"; [ -n "$name" ] || name="$bdf" ;;
    sysfs) name="/sys/bus/pci/devices/$bdf" ;;
    bdf) ;;
    *) bed_fail "passvm.pt.name must be cdev, bdf or sysfs, not '$form'" ;;
    esac
    set -- "$@" --device "$name"
done
[ -n "$bdfs" ] || bed_fail "no device attached (Scenario::device)"

run=1
while [ "$run" -le "$runs" ]; do
    echo "passvm run $run of $runs: backend $backend, devices: $*"
    bed_passvm --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory size=256M \
        --vfio-backend "$backend" \
        --cmdline "$(bed_l2_cmdline pt-blk "passvm.run=$run $l2extra")" "$@"
    rc=$?
    bed_report run "$run rc=$rc"
    [ "$rc" -eq 0 ] || bed_fail "passvm run $run exited with $rc"
    run=$((run + 1))
done
for bdf in $bdfs; do bed_report after "$bdf $(bed_driver "$bdf")"; done
