# SIGTERM to passvm while L2 runs stops the VM cleanly: exit status 143, one line saying
# why, and every vCPU thread out of KVM_RUN (2 vCPUs, both idle in the guest, so this
# exercises the kick). Markers: signal_rc, signal_reason, signal_ms (SIGTERM -> exit).
"$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cpus boot=2 --memory size=128M \
    --cmdline "$(bed_l2_cmdline vm-idle) quiet" </dev/null >/tmp/.l2 2>/tmp/.vmm &
pid=$!
i=0
until grep -q "BED idle=yes" /tmp/.l2; do
    i=$((i + 1))
    [ "$i" -le 600 ] || { kill -9 "$pid"; bed_fail "L2 did not come up"; }
    kill -0 "$pid" 2>/dev/null || { sed 's/^/VMM| /' /tmp/.vmm; bed_fail "passvm exited early"; }
    sleep 0.2
done
t0="$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)"
kill -TERM "$pid"
wait "$pid"
rc=$?
t1="$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)"
bed_report signal_rc "$rc"
bed_report signal_reason "$(tail -n 1 /tmp/.vmm)"
bed_report signal_ms "$((t1 - t0))"
