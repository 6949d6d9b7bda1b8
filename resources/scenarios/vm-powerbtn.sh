# SIGPWR to passvm presses L2's ACPI power button; L2 sees the GED interrupt and powers
# off, and passvm exits 0 saying so. Markers: powerbtn_rc, powerbtn_reason (passvm's
# last line), powerbtn_l2 (L2's markers, one per line joined by '|'), powerbtn_ms
# (SIGPWR -> exit).
"$PASSVM" --kernel "$L2_BZIMAGE" --initramfs "$L2_INITRD" --cpus boot=1 --memory size=128M \
    --cmdline "$(bed_l2_cmdline vm-powerbtn passvm.end=poweroff)" </dev/null >/tmp/.l2 2>/tmp/.vmm &
pid=$!
i=0
until grep -q "BED powerbtn=ready" /tmp/.l2; do
    i=$((i + 1))
    [ "$i" -le 600 ] || { kill -9 "$pid"; sed 's/^/L2| /' /tmp/.l2 >&3; bed_fail "L2 did not come up"; }
    kill -0 "$pid" 2>/dev/null || { sed 's/^/L2| /' /tmp/.l2 >&3; sed 's/^/VMM| /' /tmp/.vmm >&3; bed_fail "passvm exited early"; }
    sleep 0.2
done
t0="$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)"
kill -PWR "$pid"
wait "$pid"
rc=$?
t1="$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)"
sed 's/^/L2| /' /tmp/.l2 >&3
sed 's/^/VMM| /' /tmp/.vmm >&3
bed_report powerbtn_rc "$rc"
bed_report powerbtn_reason "$(tail -n 1 /tmp/.vmm)"
bed_report powerbtn_ms "$((t1 - t0))"
