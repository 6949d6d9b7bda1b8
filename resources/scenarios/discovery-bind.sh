# `passvm bind` then `passvm unbind`: the disk "d0" goes to vfio-pci, the
# original driver is remembered, and unbind brings it back. Markers:
# driver_before, bind_rc, driver_bound, record, bind_again, unbind_rc,
# driver_after, record_after, override_after.

bdf="$(bed_bdf d0)"
dev="/sys/bus/pci/devices/$bdf"
bed_report driver_before "$(bed_driver "$bdf")"

"$PASSVM" bind "$bdf"
bed_report bind_rc "$?"
bed_report driver_bound "$(bed_driver "$bdf")"
bed_report record "$(tr '\n' ' ' <"/run/passvm/bind/$bdf" 2>/dev/null)"
bed_report cdev_after_bind "$(bed_vfio_cdev "$bdf")"
bed_report bind_again "$("$PASSVM" bind "$bdf" 2>&1 | head -n 1)"

"$PASSVM" unbind "$bdf"
bed_report unbind_rc "$?"
bed_report driver_after "$(bed_driver "$bdf")"
if [ -e "/run/passvm/bind/$bdf" ]; then r=present; else r=gone; fi
bed_report record_after "$r"
bed_report override_after "$(cat "$dev/driver_override")"
# The disk works for L1 again: its block device is back.
bed_report block_after "$(ls "$dev"/virtio*/block 2>/dev/null | head -n 1)"
exit 0
