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
#                                         SIGTERM (markers sigterm_rc, sigterm_ms: from
#                                         the signal to passvm's exit); the runs follow
#   passvm.pt.sigkill=1                   first, a passvm whose L2 writes to every disk
#                                         (check pt-io) is killed with SIGKILL mid-I/O
#                                         (marker sigkill_rc); the runs follow
#   passvm.pt.aer=1                       first, a passvm whose L2 idles gets a PCIe
#                                         error injected at the first device through
#                                         L1's aer_inject (markers aer_rc, aer_msg:
#                                         passvm's message); the runs follow
#   passvm.pt.managed=1                   leave the disks on virtio-pci and pass them as
#                                         BDF,managed=on: passvm binds them to vfio-pci
#                                         and gives them back when it ends
#   passvm.pt.vf=1                        devices with SR-IOV (igb) pass one new virtual
#                                         function each instead of themselves
#   passvm.pt.dirty=1                     before binding each virtio function to
#                                         vfio-pci, and again before every run, write
#                                         ACKNOWLEDGE into its device status (marker
#                                         l1_dirty="BDF STATUS", and reset_method=
#                                         "BDF METHODS" as L1's kernel offers them);
#                                         L2's pt-reset check then reads the status
#                                         passvm's reset left
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

# ACKNOWLEDGE (1) in a virtio function's device status, from L1 through /dev/mem: only
# a reset of the function clears it. Runtime PM stays off (vfio-pci would put an idle
# function in D3hot, where its BAR does not answer).
dirty_virtio() {
    dv="/sys/bus/pci/devices/$1"
    echo on >"$dv/power/control" 2>/dev/null
    addr="$(bed_virtio_common "$dv")"
    [ -n "$addr" ] || bed_fail "$1 has no virtio common config"
    devmem $((addr + 0x14)) 8 1
    bed_report l1_dirty "$1 $(($(devmem $((addr + 0x14)) 8)))"
}

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
    if [ "$(bed_cmdline_arg passvm.pt.dirty)" = 1 ]; then
        dir="/sys/bus/pci/devices/$bdf"
        [ -e "$dir/driver" ] && echo "$bdf" >"$dir/driver/unbind"
        bed_report reset_method "$bdf $(cat "$dir/reset_method" 2>/dev/null)"
        dirty_virtio "$bdf"
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

# A passvm in the background whose L2 runs CHECK until it reports "BED KEY=yes|started"
# (pid in $pid; L2's output in /tmp/.pt-l2, passvm's in /tmp/.pt-vmm).
background_passvm() {
    bp_check="$1" bp_key="$2"
    shift 2
    "$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory size=256M \
        --vfio-backend "$backend" --cmdline "$(bed_l2_cmdline "$bp_check")" "$@" \
        </dev/null >/tmp/.pt-l2 2>/tmp/.pt-vmm &
    pid=$!
    i=0
    until grep -q "BED $bp_key=" /tmp/.pt-l2 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le 900 ] || { kill -9 "$pid"; bed_fail "L2 did not come up"; }
        kill -0 "$pid" 2>/dev/null || { sed 's/^/VMM| /' /tmp/.pt-vmm; bed_fail "passvm exited early"; }
        sleep 0.2
    done
}
# Milliseconds since boot, for a signal-to-exit time.
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

if [ "$(bed_cmdline_arg passvm.pt.sigterm)" = 1 ]; then
    echo "passvm with an idle L2, to be stopped by SIGTERM: $*"
    background_passvm vm-idle idle "$@"
    t0="$(now_ms)"
    kill -TERM "$pid"
    wait "$pid"
    rc=$?
    bed_report sigterm_ms "$(($(now_ms) - t0))"
    bed_report sigterm_rc "$rc"
    sed 's/^/VMM| /' /tmp/.pt-vmm
    for bdf in $bdfs; do bed_report after_sigterm "$bdf $(bed_driver "$bdf")"; done
fi

if [ "$(bed_cmdline_arg passvm.pt.sigkill)" = 1 ]; then
    echo "passvm with L2 writing to its disks, to be killed by SIGKILL: $*"
    background_passvm pt-io io "$@"
    sleep 1
    kill -KILL "$pid"
    wait "$pid"
    bed_report sigkill_rc "$?"
    grep -q "BED fail=" /tmp/.pt-l2 && { cat /tmp/.pt-l2; bed_fail "L2's writes failed before the kill"; }
fi

if [ "$(bed_cmdline_arg passvm.pt.aer)" = 1 ]; then
    first="${bdfs# }"
    first="${first%% *}"
    echo "passvm with an idle L2; a PCIe error will be injected at $first: $*"
    background_passvm vm-idle idle "$@"
    bed_aer_inject "$first" || { kill -9 "$pid"; bed_fail "aer_inject refused an error for $first"; }
    i=0
    while kill -0 "$pid" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le 100 ] || { kill -9 "$pid"; sed 's/^/VMM| /' /tmp/.pt-vmm; bed_fail "passvm ran on 20 s after the device error"; }
        sleep 0.2
    done
    wait "$pid"
    bed_report aer_rc "$?"
    bed_report aer_msg "$(grep -m1 'PCIe error' /tmp/.pt-vmm)"
    sed 's/^/VMM| /' /tmp/.pt-vmm
    dmesg | grep -i -E 'aer|vfio' | tail -n 8 | sed 's/^/L1-DMESG| /'
fi

run=1
while [ "$run" -le "$runs" ]; do
    if [ "$run" -gt 1 ] && [ "$(bed_cmdline_arg passvm.pt.dirty)" = 1 ]; then
        for bdf in $bdfs; do dirty_virtio "$bdf"; done
    fi
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
# What L1's kernel said about resets (its console is quiet).
[ "$(bed_cmdline_arg passvm.pt.dirty)" = 1 ] &&
    dmesg | grep -i -E "reset|not ready|giving up|link" | tail -n 12 | sed 's/^/L1-DMESG| /'
true
