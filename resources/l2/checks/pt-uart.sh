# The mtty mdev (a 2-port PCI UART whose ports loop written bytes back) seen from L2:
# 8250_pci must claim it and register its ports on the I/O-port BARs; bytes written
# to each port must come back. Markers: driver, port ("ttySn IO-BASE IRQ"), echo
# ("ttySn <what came back>"), irq (its interrupt line and count while open), serial
# (the driver's tx/rx counters).
found=0
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x4348:0x3253 ] || continue
    found=1
    drv=none
    [ -e "$d/driver" ] && drv="$(basename "$(readlink "$d/driver")")"
    bed_report driver "$(basename "$d") $drv"
done
[ "$found" = 1 ] || bed_fail "no mtty (4348:3253) PCI function in L2"
ports=""
for t in /sys/class/tty/ttyS*; do
    n="${t##*/}"
    [ "$n" = ttyS0 ] && continue
    # type 0 is PORT_UNKNOWN: an absent legacy UART slot, not ours.
    [ "$(cat "$t/type" 2>/dev/null || echo 0)" != 0 ] || continue
    port="$(cat "$t/port")"
    bed_report port "$n $port $(cat "$t/irq")"
    ports="$ports $n"
done
[ -n "$ports" ] || bed_fail "8250_pci registered no port for the mtty UART"
for n in $ports; do
    stty -F "/dev/$n" raw -echo 115200 || bed_fail "stty $n"
    cat "/dev/$n" >"/tmp/$n.rx" &
    reader=$!
    sleep 1
    # Fewer than 16 bytes: mtty's loopback FIFO is a 16-entry ring whose LSR reports
    # "no data" when all 16 entries are full (head == tail), and 8250 loads 16 at once.
    printf 'PT-%s\n' "$n" >"/dev/$n"
    i=0
    until grep -q "PT-$n" "/tmp/$n.rx" || [ "$i" -ge 50 ]; do
        sleep 0.2
        i=$((i + 1))
    done
    # While the port is open its interrupt line is in /proc/interrupts.
    bed_report_irqs "\$NF == \"$n\""
    kill "$reader" 2>/dev/null
    bed_report echo "$n $(head -n 1 "/tmp/$n.rx")"
done
# The driver's own counters: "N: uart:16550A port:0000C000 irq:17 tx:18 rx:18 ...".
grep -v '^serinfo' /proc/tty/driver/serial | while read -r line; do bed_report serial "$line"; done
