# Hot-plug through the API (issue 14, docs/hotplug.md): L2 boots with no device and two
# PCIe root ports (--pcie-ports 2); L1 adds disk h0 with `passvm remote add-device`, L2's
# pciehp and virtio driver take it and L2 writes to it; `remove-device` makes it leave
# L2, after which L1 binds it to its own driver (virtio-pci) and back to vfio-pci; the
# second add works again, and L2 ends the VM (resources/l2/checks/hotplug.sh).
# passvm.hp.unbind=1: then L1 unbinds vfio-pci from the disk while L2 uses it: VFIO's
# request interrupt makes passvm unplug it from L2, the unbind completes (unbind_ms,
# l1_driver2) and L2 runs on (its hp_gone=2, hp_after=alive).
# Markers: host_bdf; add1_rc, add1_out (the JSON answer); remove1_rc; removed_ms (from
# the remove request to passvm letting the device go); l1_driver (the disk's L1 driver
# between the rounds); add2_rc, add2_out; passvm_rc; L2's hp_* markers (replayed).
# passvm.hp.mode=pair: two disks, h0 and h1 (h1 left on L1's driver at first). Adds that
# must fail come first: a path naming no device (bad_path_*), h1 not bound to vfio-pci
# (unbound_*), a descriptor that is no VFIO device (not_vfio_*), removing an id the VM
# does not have (no_such_*), and function mfa of a group whose other function (mfb)
# stays on L1's driver (not_viable_*); L2 must answer after each (its hp_set markers
# go on).
# Then h0 is added as a descriptor the scenario opened on its cdev (fd_*: passvm is
# given the fd, not the node), a second add of h0 must be refused (again_*), h1 is
# bound and added by its address (pair_*); info_* is vm.info with both; h0, added
# first, is removed first while h1 keeps working (L2 reads it again after h0 left),
# h0 comes back on the freed port (back_*), then h1 and h0 leave in turn and the power
# button ends the VM (power_*, passvm_rc).
export RUST_LOG=info
sock=/tmp/passvm-hp.sock
remote() { "$PASSVM" remote --api-socket "$sock" "$@"; }
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# L2's console and passvm's stderr go to files the waits below read, and live to the
# bed's console as bed_passvm routes them ("L2| ", "VMM| ").
stream() {
    : >/tmp/.l2
    : >/tmp/.vmm
    tail -f /tmp/.l2 | awk '{ print "L2| " $0; fflush() }' >&3 &
    s_l2=$!
    tail -f /tmp/.vmm | awk '{ print "VMM| " $0; fflush() }' >&3 &
    s_vmm=$!
}
# The streams end with the scenario: their tail processes hold the console open, and
# L1's init waits for it to close.
dump() {
    sleep 1
    kill "$s_l2" "$s_vmm" 2>/dev/null
    for t in $(pidof tail); do kill "$t" 2>/dev/null; done
    return 0
}
# ask KEY ARGS...: passvm remote ARGS, markers KEY_rc and KEY_out (the answer).
ask() {
    key="$1"
    shift
    out="$(remote "$@" 2>/tmp/.remote-err)"
    rc=$?
    bed_report "${key}_rc" "$rc"
    bed_report "${key}_out" "$(echo "$out" | tr '\n' ' ')"
    sed 's/^/REMOTE| /' /tmp/.remote-err
}
# until_ok TRIES WHAT CMD...: runs CMD every 0.2 s until it succeeds, at most TRIES
# times, failing the scenario if passvm exits first.
until_ok() {
    tries="$1" what="$2"
    shift 2
    i=0
    until "$@"; do
        i=$((i + 1))
        [ "$i" -le "$tries" ] || { kill -9 "$pid"; dump; bed_fail "timed out waiting for $what"; }
        kill -0 "$pid" 2>/dev/null || { dump; bed_fail "passvm exited while waiting for $what"; }
        sleep 0.2
    done
}
has_line() { grep -q "$2" "$1" 2>/dev/null; }
# wait_for FILE PATTERN WHAT: until FILE has a line matching PATTERN (passvm running).
wait_for() { until_ok 900 "$3" has_line "$1" "$2"; }
name_of() { c="$(bed_vfio_cdev "$1")"; echo "${c:-$1}"; }

# The guest's console ends its lines with CR LF.
last_set_is() { [ "$(tr -d '\r' </tmp/.l2 | sed -n 's/^BED hp_set=//p' | tail -n 1)" = "$1" ]; }
# set_is NAMES WHAT: until L2's latest disk set (its last hp_set marker) is NAMES.
set_is() { until_ok 900 "$2 (L2's disks: $1)" last_set_is "$1"; }
removed_twice() { [ "$(grep -c 'a: removed from root port' /tmp/.vmm)" -ge 2 ]; }
# alive KEY: L2 still answers (a fresh hp_set line after asking it to look again: its
# loop reports its set every 5 s anyway, so a new line within 15 s says it runs).
alive() {
    n="$(grep -c '^BED hp_set=' /tmp/.l2)"
    i=0
    until [ "$(grep -c '^BED hp_set=' /tmp/.l2)" -gt "$n" ]; do
        i=$((i + 1))
        [ "$i" -le 75 ] || { bed_report "$1" stuck; return 0; }
        sleep 0.2
    done
    bed_report "$1" alive
}

unbind="$(bed_cmdline_arg passvm.hp.unbind || echo 0)"
mode="$(bed_cmdline_arg passvm.hp.mode || echo single)"
bdf="$(bed_bdf h0)"
bed_report host_bdf "$bdf"
bed_bind_vfio "$bdf"
end=
[ "$mode" = pair ] && end=passvm.end=poweroff
# passvm.hp.mode=boot: the disk comes with the VM, behind port 2 (--device ...,port=2),
# instead of the first add-device; the rest is the same.
set --
[ "$mode" = boot ] && set -- --device "$(name_of "$bdf"),id=hp0,port=2"
echo "passvm with two PCIe root ports, --api-socket path=$sock and $# boot device option(s)"
stream
"$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cpus boot=1 --memory size=256M \
    --pcie-ports 2 --api-socket "path=$sock" "$@" \
    --cmdline "$(bed_l2_cmdline hotplug "passvm.hp.last_leaves=$unbind passvm.hp.mode=$mode $end")" \
    </dev/null >/tmp/.l2 2>/tmp/.vmm &
pid=$!
wait_for /tmp/.l2 "BED hp_ready=" "L2 to boot"
if [ "$mode" = pair ]; then
    bdf1="$(bed_bdf h1)"
    bed_report host_bdf1 "$bdf1"
    ask bad_path add-device /dev/vfio/pci/0000:00:1f.6,id=x
    alive bad_path_l2
    ask unbound add-device "$bdf1,id=x"
    alive unbound_l2
    exec 8</dev/null
    ask not_vfio add-device fd=8,id=x
    exec 8<&-
    alive not_vfio_l2
    ask no_such remove-device id=nope
    # One function of a two-function group on vfio-pci, its sibling on L1's driver.
    mfa="$(bed_bdf mfa)"
    bed_report host_mfb "$(bed_bdf mfb)"
    bed_bind_vfio "$mfa"
    ask not_viable add-device "$mfa,id=x"
    alive not_viable_l2
    # h0 as a descriptor opened here: passvm gets the fd, never the node's path.
    cdev="$(bed_vfio_cdev "$bdf")"
    [ -n "$cdev" ] || bed_fail "$bdf has no VFIO cdev (the own kernel has them)"
    exec 7<>"$cdev"
    ask fd add-device fd=7,id=a
    exec 7<&-
    set_is "h0@0000:01:00.0" "h0 in L2 (added as a descriptor)"
    ask again add-device "$bdf,id=c"
    bed_bind_vfio "$bdf1"
    ask pair add-device "$bdf1,id=b"
    set_is "h0@0000:01:00.0 h1@0000:02:00.0" "both disks in L2"
    ask info info
    ask remove_a remove-device id=a
    set_is "h1@0000:02:00.0" "h0 to leave L2 while h1 stays"
    wait_for /tmp/.vmm "a: removed from root port" "passvm to let h0 go"
    ask back add-device "$bdf,id=a"
    set_is "h0@0000:01:00.0 h1@0000:02:00.0" "h0 back on the freed port"
    ask remove_b remove-device id=b
    set_is "h0@0000:01:00.0" "h1 to leave L2"
    ask remove_a2 remove-device id=a
    set_is "none" "h0 to leave L2 again"
    # L2 loses the disk when pciehp unbinds its driver; passvm lets it go at the slot's
    # power-off just after.
    until_ok 300 "passvm to let h0 go the second time" removed_twice
    ask info_end info
    ask power power-button
    wait "$pid"
    bed_report passvm_rc "$?"
    dump
    exit 0
fi
if [ "$mode" = boot ]; then
    ask info0 info
else
    ask add1 add-device "$(name_of "$bdf"),id=hp0"
fi
wait_for /tmp/.l2 "BED hp_disk=1 " "L2 to use the disk"
t0="$(now_ms)"
ask remove1 remove-device id=hp0
wait_for /tmp/.l2 "BED hp_gone=1" "the disk to leave L2"
wait_for /tmp/.vmm "hp0: removed from root port" "passvm to let the disk go"
bed_report removed_ms "$(($(now_ms) - t0))"
# Released to the host: L1's own driver takes it, then it goes back to vfio-pci.
bed_unbind_vfio "$bdf"
bed_report l1_driver "$bdf $(bed_driver "$bdf")"
bed_bind_vfio "$bdf"
ask add2 add-device "$(name_of "$bdf"),id=hp0"
wait_for /tmp/.l2 "BED hp_disk=2 " "L2 to use the disk again"
if [ "$unbind" = 1 ]; then
    # The host takes the device back while L2 uses it: the unbind blocks in the kernel
    # until passvm has let go.
    t0="$(now_ms)"
    echo "$bdf" >/sys/bus/pci/drivers/vfio-pci/unbind &
    upid=$!
    wait_for /tmp/.l2 "BED hp_gone=2" "the disk to leave L2 after the host's unbind"
    wait "$upid"
    bed_report unbind_ms "$(($(now_ms) - t0))"
    bed_report l1_driver2 "$bdf $(bed_driver "$bdf")"
fi
wait "$pid"
bed_report passvm_rc "$?"
dump
