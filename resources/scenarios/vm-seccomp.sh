# seccomp (issue 13): every thread of a running passvm is under a filter of its own.
# passvm (2 vCPUs, L2 idle; --seccomp as passvm.seccomp=MODE gives it, default: none,
# i.e. passvm's default "on") is read from /proc while L2 idles, then stopped with SIGTERM,
# so the teardown runs under the filters too.
# Markers: thread="COMM MODE FILTERS" per thread (MODE 2 = filter, FILTERS = how many
# filters bind it, from /proc/PID/task/TID/status), seccomp_rc (passvm's exit status),
# seccomp_reason (its last line).
mode="$(bed_cmdline_arg passvm.seccomp || true)"
"$PASSVM" --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --cpus boot=2 --memory size=128M \
    ${mode:+--seccomp "$mode"} --cmdline "$(bed_l2_cmdline vm-idle) quiet" \
    </dev/null >/tmp/.l2 2>/tmp/.vmm &
pid=$!
i=0
until grep -q "BED idle=yes" /tmp/.l2 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 600 ] || { kill -9 "$pid"; bed_fail "L2 did not come up"; }
    kill -0 "$pid" 2>/dev/null || { sed 's/^/VMM| /' /tmp/.vmm; bed_fail "passvm exited early"; }
    sleep 0.2
done
for t in /proc/"$pid"/task/*; do
    bed_report thread "$(cat "$t/comm") $(awk '/^Seccomp:/ { m = $2 } /^Seccomp_filters:/ { f = $2 }
        END { print m, f }' "$t/status")"
done
kill -TERM "$pid"
wait "$pid"
bed_report seccomp_rc "$?"
sed 's/^/VMM| /' /tmp/.vmm
bed_report seccomp_reason "$(tail -n 1 /tmp/.vmm)"
