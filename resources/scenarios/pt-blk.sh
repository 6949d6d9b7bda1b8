# Issue 5: L0's virtio-blk disks passed through by passvm to L2, driven by L2's own
# virtio driver. Every disk the launcher attached (passvm.devices) is bound to vfio-pci
# and given to one passvm, in passvm.devices order.
# Parameters (L1 kernel arguments, Scenario::l1_append):
#   passvm.pt.backend=auto|iommufd|group  --vfio-backend (default auto)
#   passvm.pt.name=cdev|bdf|sysfs|fd      how --device names a disk (default cdev when
#                                         the kernel has one, else bdf); fd: this script
#                                         plays the privileged launcher, opening the cdev
#                                         and /dev/iommu and passing them as fd=N and
#                                         --iommufd-fd (first disk only: fds 7 and 8;
#                                         fd 3 is the bed's console)
#   passvm.pt.nomsi=1                     boot L2 with pci=nomsi (the INTx path)
#   passvm.pt.runs=N                      run passvm N times in a row (default 1); L2's
#                                         `reboot -f` ends each run
#   passvm.pt.sigterm=1                   first, a passvm whose L2 idles is stopped with
#                                         SIGTERM (marker sigterm_rc); the runs follow
#   passvm.pt.managed=1                   leave the disks on virtio-pci and pass them as
#                                         BDF,managed=on: passvm binds them to vfio-pci
#                                         and gives them back when it ends
#   passvm.pt.vf=1                        devices with SR-IOV (igb) pass one new virtual
#                                         function each instead of themselves
#   passvm.pt.check=NAME                  L2's check (default pt-blk; pt-dev drives
#                                         every kind of device)
#   passvm.pt.l2=ARGS                     more L2 kernel arguments, comma-separated
#   passvm.pt.devopts=OPTS                more --device options for every device,
#                                         +-separated (e.g. rombar=off)
#   passvm.pt.memory=OPTS                 --memory for L2, +-separated (default
#                                         size=256M; e.g. size=256M+dma_map=before-boot)
# The same script passes any kind of device (NVMe, AHCI, UART, ivshmem, VFs).
# L2 runs resources/l2/checks/pt-blk.sh. Markers: passvm_rc/passvm_ms per run,
# run="N rc=RC", after="BDF DRIVER" (the disk's L1 driver once passvm is gone),
# l1_extcaps="BDF SIZE ID..." (config space size and extended capabilities in L1),
# l1_rom="BDF SIZE MD5 HEAD" (the expansion ROM as L1 reads it, if there is one).
export RUST_LOG=info
backend="$(bed_cmdline_arg passvm.pt.backend || echo auto)"
form="$(bed_cmdline_arg passvm.pt.name || echo cdev)"
runs="$(bed_cmdline_arg passvm.pt.runs || echo 1)"
managed="$(bed_cmdline_arg passvm.pt.managed || echo 0)"
check="$(bed_cmdline_arg passvm.pt.check || echo pt-blk)"
vf="$(bed_cmdline_arg passvm.pt.vf || echo 0)"
l2extra="$(bed_cmdline_arg passvm.pt.l2 | tr ',' ' ')"
devopts="$(bed_cmdline_arg passvm.pt.devopts | tr '+' ',')"
memory="$(bed_cmdline_arg passvm.pt.memory | tr '+' ',')"
memory="${memory:-size=256M}"
[ "$(bed_cmdline_arg passvm.pt.nomsi)" = 1 ] && l2extra="$l2extra pci=nomsi"
bed_report_host

set --
bdfs=""
for entry in $(bed_cmdline_arg passvm.devices | tr ',' ' '); do
    bdf="${entry#*@}"
    if [ "$vf" = 1 ] && [ -e "/sys/bus/pci/devices/$bdf/sriov_totalvfs" ]; then
        bed_make_vf "$bdf"
        bdf="$BED_VF"
    fi
    bdfs="$bdfs $bdf"
    name="$bdf"
    # What L1 sees of the function's config space, to compare with L2's view.
    bed_report l1_extcaps "$bdf $(bed_ext_caps "/sys/bus/pci/devices/$bdf")"
    rom="$(bed_rom_sum "/sys/bus/pci/devices/$bdf")"
    [ -z "$rom" ] || bed_report l1_rom "$bdf $rom"
    if [ "$managed" = 1 ]; then
        bed_report before "$bdf $(bed_driver "$bdf")"
        set -- "$@" --device "$bdf,managed=on"
        continue
    fi
    bed_bind_vfio "$bdf"
    case "$form" in
    cdev) name="$(bed_vfio_cdev "$bdf")"; [ -n "$name" ] || name="$bdf" ;;
    sysfs) name="/sys/bus/pci/devices/$bdf" ;;
    bdf) ;;
    fd)
        [ -z "${launcher_fds:-}" ] || bed_fail "passvm.pt.name=fd takes one disk"
        cdev="$(bed_vfio_cdev "$bdf")"
        [ -n "$cdev" ] || bed_fail "$bdf has no cdev: the fd form needs iommufd"
        # The descriptors passvm inherits, as a launcher would hand them over.
        exec 7<>"$cdev" 8<>/dev/iommu || bed_fail "cannot open $cdev or /dev/iommu"
        launcher_fds=1
        name="fd=7"
        set -- "$@" --iommufd-fd 8
        ;;
    *) bed_fail "passvm.pt.name must be cdev, bdf, sysfs or fd, not '$form'" ;;
    esac
    set -- "$@" --device "$name${devopts:+,$devopts}"
done
[ -n "$bdfs" ] || bed_fail "no device attached (Scenario::device)"

if [ "$(bed_cmdline_arg passvm.pt.sigterm)" = 1 ]; then
    echo "passvm with an idle L2, to be stopped by SIGTERM: $*"
    "$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory size=256M \
        --vfio-backend "$backend" --cmdline "$(bed_l2_cmdline vm-idle)" "$@" \
        </dev/null >/tmp/.pt-l2 2>/tmp/.pt-vmm &
    pid=$!
    i=0
    until grep -q "BED idle=yes" /tmp/.pt-l2 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le 900 ] || { kill -9 "$pid"; bed_fail "L2 did not come up"; }
        kill -0 "$pid" 2>/dev/null || { sed 's/^/VMM| /' /tmp/.pt-vmm; bed_fail "passvm exited early"; }
        sleep 0.2
    done
    kill -TERM "$pid"
    wait "$pid"
    bed_report sigterm_rc "$?"
    sed 's/^/VMM| /' /tmp/.pt-vmm
    for bdf in $bdfs; do bed_report after_sigterm "$bdf $(bed_driver "$bdf")"; done
fi

run=1
while [ "$run" -le "$runs" ]; do
    echo "passvm run $run of $runs: backend $backend, devices: $*"
    bed_passvm --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory "$memory" \
        --vfio-backend "$backend" \
        --cmdline "$(bed_l2_cmdline "$check" "passvm.run=$run $l2extra")" "$@"
    rc=$?
    bed_report run "$run rc=$rc"
    [ "$rc" -eq 0 ] || bed_fail "passvm run $run exited with $rc"
    run=$((run + 1))
done
for bdf in $bdfs; do bed_report after "$bdf $(bed_driver "$bdf")"; done
