
# A PCI function's config space size and extended capability IDs, from its sysfs
# config file: "SIZE ID ID ..." (IDs as 4 hex digits, in list order; "SIZE" alone for
# a 256-byte space). The walk is bounded (1024 hops) and stops at a pointer outside
# 0x100-0xffc, a zero or all-ones header, as the kernel's does. Needs root (sysfs
# shows only the first 64 bytes to others).
bed_ext_caps() {
    ec_cfg="$1/config"
    ec_size="$(wc -c <"$ec_cfg")"
    ec_ids=""
    ec_off=256
    ec_n=0
    while [ "$ec_size" -ge 4096 ] && [ "$ec_off" -ge 256 ] && [ "$ec_off" -le 4092 ] && [ "$ec_n" -lt 1024 ]; do
        ec_h="$(od -An -tx4 -j "$ec_off" -N4 "$ec_cfg" | tr -d ' ')"
        case "$ec_h" in "" | 00000000 | ffffffff) break ;; esac
        ec_v=$((0x$ec_h))
        ec_id=$((ec_v & 0xffff))
        # ID 0 is the "null" capability a VMM leaves where it hid the first one.
        [ "$ec_id" -ne 0 ] && ec_ids="$ec_ids $(printf %04x "$ec_id")"
        ec_off=$(((ec_v >> 20) & 0xffc))
        ec_n=$((ec_n + 1))
    done
    echo "$ec_size$ec_ids"
}

# A function's expansion ROM as the kernel reads it through sysfs (enabled for the
# read, disabled after): "SIZE MD5 FIRST4BYTES"; nothing when it has no ROM BAR.
bed_rom_sum() {
    [ -e "$1/rom" ] || return 0
    echo 1 >"$1/rom" 2>/dev/null || return 0
    cat "$1/rom" >/tmp/.bed-rom 2>/dev/null
    echo 0 >"$1/rom" 2>/dev/null
    echo "$(wc -c </tmp/.bed-rom) $(md5sum </tmp/.bed-rom | cut -d' ' -f1) $(od -An -tx1 -N4 /tmp/.bed-rom | tr -d ' ')"
    rm -f /tmp/.bed-rom
}

# The address of a virtio-pci function's common configuration (the vendor capability,
# ID 0x09, of cfg_type 1: its BAR and offset), with memory decode turned on so that it
# answers; nothing when the function has none. For the reset scenario: the device
# status byte (common config + 0x14) survives anything but a reset of the device.
bed_virtio_common() {
    vc_d="$1"
    vc_p=$(od -An -tu1 -j52 -N1 "$vc_d/config" | tr -d ' ') vc_n=0
    while [ "${vc_p:-0}" -ge 64 ] && [ "$vc_n" -lt 48 ]; do
        # id, next, len, cfg_type, bar, pad x3, offset (le32)
        set -- $(od -An -tu1 -j"$vc_p" -N12 "$vc_d/config")
        if [ "$1" = 9 ] && [ "$4" = 1 ]; then
            vc_line=$(sed -n "$(($5 + 1))p" "$vc_d/resource")
            vc_bar=$(($(echo "$vc_line" | cut -d' ' -f1)))
            [ "$vc_bar" -ne 0 ] || return 0
            vc_cmd=$(od -An -tu1 -j4 -N1 "$vc_d/config" | tr -d ' ')
            printf "$(printf '\\%03o' $((vc_cmd | 2)))" |
                dd of="$vc_d/config" bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
            echo $((vc_bar + ($9 | ${10} << 8 | ${11} << 16 | ${12} << 24)))
            return 0
        fi
        vc_p=$2 vc_n=$((vc_n + 1))
    done
}
