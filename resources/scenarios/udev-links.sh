# Issue 15: /dev/vfio/<bus>/<name> made real for every program by passvm's udev rule
# (resources/udev/70-passvm-vfio.rules), installed with `passvm udev install` and run
# by a real systemd-udevd (Debian's, resources/l1/udev.sh). The disk "d0" is bound to
# vfio-pci, opened through its link by a program that is not passvm, given to L2 by
# its link, and unbound; an mtty mdev gets its link too; tampered and dangling links
# are refused. tests/nested_discovery.rs asserts on the markers:
#   udevd=up                 systemd-udevd answers `udevadm control --ping`
#   install_rc=N             passvm udev install (rule written, reloaded, replayed)
#   link_unbound=T|none      /dev/vfio/pci/<BDF> while d0 is on virtio-pci
#   link=T, link_cdev=C      its target once d0 is on vfio-pci, and the cdev it reaches
#   cdev=/dev/vfio/devices/vfioN   d0's cdev by sysfs
#   group_node=char|...      /dev/vfio/<group> is still the kernel's group node
#   open=LINE                vfio-open (resources/l1/vfio-open.c) on the link
#   devices_link=LINE        passvm devices' "link:" line for d0
#   mdev_link=T              /dev/vfio/mdev/<uuid>
#   plan=NAME|rc=N|LINE      dry runs naming the links (bed_dry_run)
#   tampered=rc=N|LINE       d0's link pointed at the mdev's cdev: refused
#   refreshed=T              d0's link after a second `passvm udev install`
#   install_line=LINE        that install's report line for d0's cdev
#   dangling=rc=N|LINE       the mdev's link planted again after the mdev is gone
#   removed_rc=N, rule_left=yes|no, link_after_remove=T|none   passvm udev remove
#                            while d0 is bound
#   link_reinstalled=T       d0's link after installing the rule once more
#   link_gone=T|none         d0's link after unbinding it
# plus bed_passvm's passvm_rc (L2 runs the pt-blk check on d0, named by its link).
export RUST_LOG=info

bdf="$(bed_bdf d0)"
link="/dev/vfio/pci/$bdf"
target() { readlink "$1" 2>/dev/null || echo none; }
settle() { udevadm settle --timeout=30 || echo "udevadm settle failed"; }

# udevd keeps its state in /run/udev; L1's root is the initramfs, so /run is just a
# directory. No passwd/group in L1: names are never resolved.
mkdir -p /run /etc/udev/rules.d
/lib/systemd/systemd-udevd --resolve-names=never --debug >/tmp/udevd.log 2>&1 &
i=0
until udevadm control --ping 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 50 ]; then
        sed 's/^/udevd: /' /tmp/udevd.log | tail -n 40
        bed_fail "systemd-udevd did not come up"
    fi
    sleep 0.2
done
bed_report udevd up

bed_report link_unbound "$(target "$link")"
"$PASSVM" udev install
bed_report install_rc "$?"
[ -f /etc/udev/rules.d/70-passvm-vfio.rules ] || bed_fail "passvm udev install wrote no rule"

bed_bind_vfio "$bdf"
settle
cdev="$(bed_vfio_cdev "$bdf")"
[ -n "$cdev" ] || bed_fail "$bdf has no VFIO cdev on this kernel"
bed_report cdev "$cdev"
bed_report link "$(target "$link")"
bed_report link_cdev "$(readlink -f "$link" 2>/dev/null || echo none)"
group="$(bed_iommu_group "$bdf")"
if [ -c "/dev/vfio/$group" ] && [ ! -L "/dev/vfio/$group" ]; then
    bed_report group_node char
else
    bed_report group_node "$(ls -l "/dev/vfio/$group" 2>&1)"
fi
ls -l /dev/vfio /dev/vfio/pci 2>&1 | sed 's/^/    /'

# A program that is not passvm opens the device by its per-bus name.
bed_report open "$(vfio-open "$link" 2>&1)"

bed_report devices_link "$("$PASSVM" devices 2>&1 | grep -F "link: $link" | sed 's/^ *//')"
"$PASSVM" devices 2>&1 | sed 's/^/    /'
bed_dry_run "$link"

# An mdev's link.
mdev="$(bed_mtty_create)"
uuid="${mdev##*/}"
settle
mlink="/dev/vfio/mdev/$uuid"
bed_report mdev_link "$(target "$mlink")"
bed_dry_run "$mlink"

# Tampered: d0's link now leads to the mdev's cdev. passvm refuses it; a second
# `passvm udev install` (reload + replay) puts it right.
mcdev="$(readlink "$mlink")"
ln -sfn "$mcdev" "$link"
bed_dry_run "$link"
bed_report tampered "rc=$dr_rc|$dr_line"
report="$("$PASSVM" udev install 2>&1)"
echo "$report" | sed 's/^/    /'
settle
bed_report refreshed "$(target "$link")"
bed_report install_line "$(echo "$report" | grep "^${cdev##*/}: ")"

# Dangling: the mdev goes (udev drops its link), then a link is planted in its place.
echo 1 >"$mdev/remove" || bed_fail "cannot remove the mdev"
settle
bed_report mdev_link_gone "$(target "$mlink")"
# (udev removed /dev/vfio/mdev with its last link.)
mkdir -p /dev/vfio/mdev
ln -s ../devices/vfio99 "$mlink" || bed_fail "cannot plant $mlink"
bed_dry_run "$mlink"
bed_report dangling "rc=$dr_rc|$dr_line"
rm -f "$mlink"

# udev's log for the rule's program: what it did for each cdev.
grep -E "PASSVM_VFIO_LINK|passvm: no /dev/vfio link" /tmp/udevd.log | head -n 5 | sed 's/^/    udevd: /'

# L2 gets d0 by its link and drives it with its own virtio driver.
bed_passvm --kernel "$L2_VMLINUX" --initramfs "$L2_INITRD" --memory size=256M \
    --cmdline "$(bed_l2_cmdline pt-blk)" --device "$link"
rc=$?
[ "$rc" -eq 0 ] || bed_fail "passvm exited with $rc"

# `passvm udev remove` while d0 is bound: the rule goes, and so does its link.
"$PASSVM" udev remove
bed_report removed_rc "$?"
if [ -e /etc/udev/rules.d/70-passvm-vfio.rules ]; then bed_report rule_left yes; else bed_report rule_left no; fi
bed_report link_after_remove "$(target "$link")"
"$PASSVM" udev install >/dev/null || bed_fail "passvm udev install failed the second time"
settle
bed_report link_reinstalled "$(target "$link")"

# Unbound: the cdev goes, and udev takes the link with it.
bed_unbind_vfio "$bdf"
settle
bed_report link_gone "$(target "$link")"
exit 0
