# Issue 5 benchmark (figures, no pass/fail on times): one virtio-blk disk (d0).
# 1. L1 reads the disk directly (virtio-blk in L1): bed_read_bench
#    (resources/lib/read-bench.sh), marker l1_read_ms per measurement.
# 2. The disk goes to vfio-pci; passvm runs L2 (512 MiB) with each backend, on 4 KiB
#    pages and on 2 MiB hugepages: marker bench="BACKEND PAGES" before each run; passvm's
#    log line "DMA-mapped N MiB ... in X ms" gives the map time; L2's pt-read check
#    reports read_ms the same way for the passed-through disk.
export RUST_LOG=info
bdf="$(bed_bdf d0)"
bed_virtio_blk_dev "$bdf"
dev="$BED_BLK_DEV"
bed_read_bench "$dev" l1_read_ms
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
