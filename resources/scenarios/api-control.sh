# The control API (issue 14, docs/api.md), driven from L1 with `passvm remote`.
# Run 1: passvm with the first disk (Device::blk, id=disk0) and --api-socket; L2 lists
# its PCI functions and waits for its power button (check api-control). While L2 runs:
# ping, info, two bad requests (remove-device of an unknown id: 404; add-device without
# a hot-plug slot: 503), the api thread's seccomp state, ping again; then power-button:
# L2 powers off and passvm exits. Run 2: passvm without devices, L2 idle, stopped with
# `passvm remote shutdown` (vm.shutdown).
# Markers (JSON answers with their newlines as spaces):
#   host_bdf          the disk's address in L1
#   ping_rc, api_ping         passvm remote ping: exit status, answer
#   info_rc, api_info         passvm remote info
#   bad_rc, bad_out, bad_err  remove-device id=nosuch: status, stdout (JSON), stderr line 1
#   add_rc, add_err           add-device on a VM without hot-plug slots
#   addfd_rc, addfd_err       the same with the device as a descriptor (fd=7, SCM_RIGHTS)
#   api_thread="COMM MODE FILTERS"  seccomp of passvm's api thread (/proc status)
#   alive             yes if passvm still ran after the bad requests
#   ping2_rc          ping after them
#   button_rc, button_ms      power-button: status; ms from the request to passvm's exit
#   passvm_rc, passvm_reason  run 1's exit status and last line
#   sock_after        gone|there: the socket file after passvm exited
#   shutdown_rc, shutdown_passvm_rc, shutdown_reason  run 2
export RUST_LOG=info
sock=/tmp/passvm-api.sock
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
remote() { "$PASSVM" remote --api-socket "$sock" "$@"; }
# Runs `passvm remote ARGS`, reporting KEY_rc and, if given, the answer as marker JSONKEY
# and stderr's first line as ERRKEY.
ask() {
    key="$1" jsonkey="$2" errkey="$3"
    shift 3
    out="$(remote "$@" 2>/tmp/.remote-err)"
    rc=$?
    bed_report "${key}_rc" "$rc"
    [ -z "$jsonkey" ] || bed_report "$jsonkey" "$(echo "$out" | tr '\n' ' ')"
    [ -z "$errkey" ] || bed_report "$errkey" "$(head -n 1 /tmp/.remote-err)"
    sed 's/^/REMOTE| /' /tmp/.remote-err
    return "$rc"
}
# Waits until L2's console (/tmp/.l2) has "BED $1=", or fails showing both logs.
wait_l2() {
    i=0
    until grep -q "BED $1=" /tmp/.l2 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -le 900 ] || { kill -9 "$pid"; dump; bed_fail "L2 did not come up"; }
        kill -0 "$pid" 2>/dev/null || { dump; bed_fail "passvm exited early"; }
        sleep 0.2
    done
}
# L2's console and passvm's stderr, straight on the bed's console (fd 3) as bed_passvm
# routes them: "L2| " and "VMM| " lines.
dump() {
    sed 's/^/L2| /' /tmp/.l2 >&3
    sed 's/^/VMM| /' /tmp/.vmm >&3
}

bdf="$(bed_bdf d0)"
bed_report host_bdf "$bdf"
bed_bind_vfio "$bdf"

echo "run 1: passvm with $bdf and --api-socket path=$sock"
"$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cpus boot=1 --memory size=256M \
    --device "$bdf,id=disk0" --api-socket "path=$sock" \
    --cmdline "$(bed_l2_cmdline api-control passvm.end=poweroff)" \
    </dev/null >/tmp/.l2 2>/tmp/.vmm &
pid=$!
wait_l2 powerbtn
ask ping api_ping "" ping
ask info api_info "" info
ask bad bad_out bad_err remove-device id=nosuch
ask add "" add_err add-device "0000:00:1f.0,id=extra"
# A device as a descriptor (SCM_RIGHTS), as a launcher passes an opened cdev: it travels
# (under the api thread's filter) and is refused for want of a slot like the other.
ask addfd "" addfd_err add-device "fd=7,id=byfd" 7</dev/null
for t in /proc/"$pid"/task/*; do
    [ "$(cat "$t/comm")" = api ] || continue
    bed_report api_thread "api $(awk '/^Seccomp:/ { m = $2 } /^Seccomp_filters:/ { f = $2 }
        END { print m, f }' "$t/status")"
done
if kill -0 "$pid" 2>/dev/null; then bed_report alive yes; else bed_report alive no; fi
ask ping2 "" "" ping
t0="$(now_ms)"
ask button "" "" power-button
wait "$pid"
rc=$?
bed_report button_ms "$(($(now_ms) - t0))"
dump
bed_report passvm_rc "$rc"
bed_report passvm_reason "$(tail -n 1 /tmp/.vmm)"
if [ -e "$sock" ]; then bed_report sock_after there; else bed_report sock_after gone; fi

echo "run 2: passvm without devices, stopped by vm.shutdown"
"$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cpus boot=1 --memory size=128M \
    --api-socket "path=$sock" --cmdline "$(bed_l2_cmdline vm-idle) quiet" \
    </dev/null >/tmp/.l2 2>/tmp/.vmm &
pid=$!
wait_l2 idle
ask shutdown "" "" shutdown
wait "$pid"
rc=$?
dump
bed_report shutdown_passvm_rc "$rc"
bed_report shutdown_reason "$(tail -n 1 /tmp/.vmm)"
true
