# Issue 5 benchmark (figures, no pass/fail on times): one virtio-blk disk (d0).
# 1. L1 reads the disk directly (virtio-blk in L1): three measurements, each the whole
#    16 MiB disk read 8 times with O_DIRECT (128 MiB), marker l1_read_ms each.
# 2. The disk goes to vfio-pci; passvm runs L2 (512 MiB) with each backend, on 4 KiB
#    pages and on 2 MiB hugepages: marker bench="BACKEND PAGES" before each run; passvm's
#    log line "DMA-mapped N MiB ... in X ms" gives the map time; L2's pt-read check
#    reports read_ms the same way for the passed-through disk.
export RUST_LOG=info
bdf="$(bed_bdf d0)"
dev=""
for b in /sys/bus/pci/devices/"$bdf"/virtio*/block/*; do [ -e "$b" ] && dev="${b##*/}"; done
[ -n "$dev" ] || bed_fail "d0 has no block device in L1 (driver $(bed_driver "$bdf"))"
for i in 1 2 3; do
    t0="$(cut -d' ' -f1 /proc/uptime)"
    for j in 1 2 3 4 5 6 7 8; do
        dd if="/dev/$dev" of=/dev/null bs=1M count=16 iflag=direct 2>/dev/null || bed_fail "read /dev/$dev in L1"
    done
    t1="$(cut -d' ' -f1 /proc/uptime)"
    bed_report l1_read_ms "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')"
done
bed_bind_vfio "$bdf"
echo 300 >/proc/sys/vm/nr_hugepages
bed_report hugepages "$(cat /proc/sys/vm/nr_hugepages)"
for backend in iommufd group; do
    for pages in 4k 2m; do
        mem=size=512M
        [ "$pages" = 2m ] && mem=size=512M,hugepages=on
        bed_report bench "$backend $pages"
        bed_passvm --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory "$mem" \
            --vfio-backend "$backend" --cmdline "$(bed_l2_cmdline pt-read)" --device "$bdf"
        rc=$?
        [ "$rc" -eq 0 ] || bed_fail "passvm ($backend, $pages) exited with $rc"
    done
done
