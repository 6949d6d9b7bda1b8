# The virtio device status of every passed-through function, read before any driver
# touches it (L2 boots with pci_stub.ids=1af4:1042: pci-stub holds the functions, so
# virtio-pci never probes, and resets, them; pt-blk.sh with
# passvm.pt.dirty=1 wrote ACKNOWLEDGE there in L1 first): "status=BDF VALUE". 0 means
# passvm reset the function before the guest got it.
n=0
for d in /sys/bus/pci/devices/*; do
    case "$(cat "$d/class")" in 0x06*) continue ;; esac
    addr="$(bed_virtio_common "$d")"
    [ -n "$addr" ] || bed_fail "$(basename "$d") has no virtio common config"
    bed_report status "$(basename "$d") $(($(devmem $((addr + 0x14)) 8)))"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || bed_fail "no passed-through function"
