# The ACPI power button passvm presses (SIGPWR): the button device is registered, then
# the Generic Event Device's interrupt arrives; the check then returns and init powers
# off (passvm.end=poweroff), as a userspace acting on KEY_POWER would. Markers:
# powerbtn_device (the input device's name), powerbtn=ready, then ged_irqs=N.
bed_report powerbtn_device "$(grep -o 'Name="Power Button"' /proc/bus/input/devices | head -n 1)"
ged_count() { awk '/ACPI:Ged/ { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print n; found = 1 } END { if (!found) print -1 }' /proc/interrupts; }
[ "$(ged_count)" -ge 0 ] || bed_fail "no ACPI:Ged line in /proc/interrupts: the GED driver did not bind"
bed_report powerbtn ready
i=0
while [ "$(ged_count)" -le 0 ]; do
    i=$((i + 1))
    [ "$i" -le 3000 ] || bed_fail "no power button press within 10 minutes"
    sleep 0.2
done
bed_report ged_irqs "$(ged_count)"
