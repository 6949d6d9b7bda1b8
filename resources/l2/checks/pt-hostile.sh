# Issue 13: a hostile guest breaks only its own device (resources/scenarios/pt-blk.sh
# with passvm.pt.check=pt-hostile and passvm.pt.runs=2; tests/nested_hostile.rs).
# Two passed-through virtio-blk disks, told apart by the name L0 wrote in sector 0:
# the victim (named by passvm.victim=NAME) and the bystander (any other).
# Run 1 (passvm.run=1): the victim is taken from its driver and abused through its
# config space and BARs while the bystander keeps serving reads and writes:
#   - every memory BAR moved over the VMM's ECAM window, the IOAPIC and LAPIC pages,
#     guest RAM and the bystander's BAR, with memory decode on ("moved=BAR TARGET");
#   - D3hot and back, many times, touching the BAR in between ("d3=CYCLES FIRST-READ",
#     or "d3=none" without a PM capability);
#   - random values over the whole MSI-X table with MSI-X enabled ("msix=ENTRIES");
#   - random bytes over its config space header and capabilities ("garbage=WRITES");
#   then its original config is written back and its driver probed again
#   ("victim_after=DRIVER"). Between the steps the bystander's disk check runs
#   ("bystander=STEP ok"), the extended config of every function is read through the
#   ECAM window ("ecam=STEP same"), and the disk check of the bystander writes its line
#   at 1 MiB for L0 to find. The victim is never written in run 1.
# Run 2: the disk check on every disk (the victim works again after passvm's reset).

run=0 victim=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    passvm.run=*) run="${arg#passvm.run=}" ;;
    passvm.victim=*) victim="${arg#passvm.victim=}" ;;
    esac
done
[ -n "$victim" ] || bed_fail "no passvm.victim=NAME on the command line"

if [ "$run" != 1 ]; then
    . /checks/disk.sh
    exit 0
fi

# cfg_r32 DIR OFF / cfg_r8 DIR OFF: config space reads through sysfs.
cfg_r32() { dd if="$1/config" bs=4 skip=$(($2 / 4)) count=1 2>/dev/null | od -An -tu4 | tr -d ' '; }
cfg_r8() { dd if="$1/config" bs=1 skip="$2" count=1 2>/dev/null | od -An -tu1 | tr -d ' '; }
# cfg_w32 DIR OFF VALUE: one aligned dword write (sysfs makes it one config cycle).
cfg_w32() {
    v=$(($3 & 0xffffffff))
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((v & 255)) $(((v >> 8) & 255)) \
        $(((v >> 16) & 255)) $(((v >> 24) & 255)))" |
        dd of="$1/config" bs=4 seek=$(($2 / 4)) count=1 conv=notrunc 2>/dev/null
}
cfg_w8() {
    printf "$(printf '\\%03o' $(($3 & 255)))" |
        dd of="$1/config" bs=1 seek="$2" count=1 conv=notrunc 2>/dev/null
}
# cap_at DIR ID: the offset of a standard capability, or nothing.
cap_at() {
    p=$(cfg_r8 "$1" 52) n=0
    while [ "$p" -ge 64 ] && [ "$n" -lt 48 ]; do
        [ "$(cfg_r8 "$1" "$p")" = "$2" ] && { echo "$p"; return; }
        p=$(cfg_r8 "$1" $((p + 1))) n=$((n + 1))
    done
}
# bar_addr DIR N: the address BAR N decodes at (64-bit BARs joined).
bar_addr() {
    lo=$(cfg_r32 "$1" $((16 + 4 * $2)))
    a=$((lo & ~15))
    [ $((lo & 6)) = 4 ] && a=$((a | ($(cfg_r32 "$1" $((20 + 4 * $2))) << 32)))
    echo "$a"
}
rand32() { od -An -tu4 -N4 /dev/urandom | tr -d ' '; }

vdir="" bdir="" bdisk=""
for d in $(bed_disks); do
    pci="$(readlink -f "/sys/block/$d/device/..")"
    case "$(bed_disk_name "$d")" in
    "$victim") vdir="$pci" ;;
    *) bdir="$pci" bdisk="$d" ;;
    esac
done
[ -n "$vdir" ] && [ -n "$bdir" ] || bed_fail "need the victim $victim and a bystander disk"
vbdf="$(basename "$vdir")"
bed_report victim "$vbdf"
bed_report bystander_dev "$(basename "$bdir") $bdisk"

# The bystander's own check: a direct read of its sector 0 and a write read back at
# 3 MiB (away from the disk check's 1 MiB line).
bystander_ok() {
    name="$(dd if="/dev/$bdisk" bs=512 count=1 iflag=direct 2>/dev/null | head -n 1)"
    case "$name" in PASSVM-DISK*) ;; *) bed_fail "bystander unreadable after $1: '$name'" ;; esac
    printf 'PASSVM-HOSTILE step=%s\n' "$1" |
        dd of="/dev/$bdisk" bs=512 seek=6144 conv=notrunc,sync,fsync 2>/dev/null ||
        bed_fail "bystander write after $1 failed"
    back="$(dd if="/dev/$bdisk" bs=512 skip=6144 count=1 iflag=direct 2>/dev/null | head -n 1)"
    [ "$back" = "PASSVM-HOSTILE step=$1" ] || bed_fail "bystander read back '$back' after $1"
    bed_report bystander "$1 ok"
}
# Extended config (offset 0x100, through passvm's ECAM window) of every function.
ecam_words() {
    for f in /sys/bus/pci/devices/*; do
        [ "$(stat -c %s "$f/config")" -gt 256 ] && printf '%s:%s ' "${f##*/}" "$(cfg_r32 "$f" 256)"
    done
}
ecam0="$(ecam_words)"
ecam_same() {
    [ "$(ecam_words)" = "$ecam0" ] || bed_fail "extended config changed after $1: $(ecam_words) (was $ecam0)"
    bed_report ecam "$1 same"
}
bystander_ok start

# Take the victim from its driver; keep its config to write back.
echo "$vbdf" >"$vdir/driver/unbind" 2>/dev/null
dd if="$vdir/config" of=/tmp/victim.cfg bs=256 count=1 2>/dev/null
cmd=$(cfg_r32 "$vdir" 4)
cfg_w32 "$vdir" 4 $(((cmd & 0xffff0000) | (cmd & 0xffff) | 0x6))

# 1. BAR moves over what is not the victim's. The bystander's first memory BAR:
btarget=""
for n in 0 1 2 3 4 5; do
    lo=$(cfg_r32 "$bdir" $((16 + 4 * n)))
    [ $((lo & 1)) = 0 ] && [ "$lo" != 0 ] && { btarget=$(bar_addr "$bdir" "$n"); break; }
done
moved=0
for n in 0 1 2 3 4 5; do
    lo=$(cfg_r32 "$vdir" $((16 + 4 * n)))
    [ "$lo" != 0 ] && [ $((lo & 1)) = 0 ] || continue
    wide=$([ $((lo & 6)) = 4 ] && echo 1 || echo 0)
    orig=$(bar_addr "$vdir" "$n")
    for target in 0xf0000000 0xfec00000 0xfee00000 0x00100000 $btarget; do
        cfg_w32 "$vdir" $((16 + 4 * n)) $(((target & 0xfffffff0) | (lo & 15)))
        [ "$wide" = 1 ] && cfg_w32 "$vdir" $((20 + 4 * n)) $((target >> 32))
        # A read where the BAR now claims to be: whatever answers, the VM goes on.
        devmem "$target" 32 >/dev/null 2>&1
        bed_report moved "$n $(printf 0x%x "$target")"
        moved=$((moved + 1))
    done
    cfg_w32 "$vdir" $((16 + 4 * n)) $(((orig & 0xfffffff0) | (lo & 15)))
    [ "$wide" = 1 ] && cfg_w32 "$vdir" $((20 + 4 * n)) $((orig >> 32))
done
[ "$moved" -gt 0 ] || bed_fail "the victim has no memory BAR to move"
bystander_ok moves
ecam_same moves

# 2. D3hot and back while touching the first memory BAR.
vbar=""
for n in 0 1 2 3 4 5; do
    lo=$(cfg_r32 "$vdir" $((16 + 4 * n)))
    [ "$lo" != 0 ] && [ $((lo & 1)) = 0 ] && { vbar=$(bar_addr "$vdir" "$n"); break; }
done
pm="$(cap_at "$vdir" 1)"
if [ -n "$pm" ]; then
    i=0 first=""
    while [ "$i" -lt 20 ]; do
        cfg_w32 "$vdir" $((pm + 4)) 3
        r="$(devmem "$vbar" 32 2>/dev/null)"
        [ -n "$first" ] || first="$r"
        devmem "$vbar" 32 0x12345678 2>/dev/null
        cfg_w32 "$vdir" $((pm + 4)) 0
        devmem "$vbar" 32 >/dev/null 2>&1
        i=$((i + 1))
    done
    bed_report d3 "$i $first"
else
    bed_report d3 none
fi
bystander_ok d3hot

# 3. Garbage over the MSI-X table, with MSI-X enabled and its function unmasked.
mx="$(cap_at "$vdir" 17)"
if [ -n "$mx" ]; then
    ctrl=$(cfg_r32 "$vdir" "$mx")
    entries=$((((ctrl >> 16) & 0x7ff) + 1))
    tbl=$(cfg_r32 "$vdir" $((mx + 4)))
    base=$(($(bar_addr "$vdir" $((tbl & 7))) + (tbl & ~7)))
    cfg_w32 "$vdir" "$mx" $((ctrl | 0x80000000))
    e=0
    while [ "$e" -lt "$entries" ]; do
        for w in 0 4 8 12; do devmem $((base + 16 * e + w)) 32 "$(rand32)" 2>/dev/null; done
        e=$((e + 1))
    done
    cfg_w32 "$vdir" "$mx" $((ctrl & 0x7fffffff))
    bed_report msix "$entries"
else
    bed_report msix none
fi
bystander_ok msix

# 4. Random bytes over the header and capabilities.
i=0
while [ "$i" -lt 300 ]; do
    r=$(rand32)
    cfg_w8 "$vdir" $((r % 256)) $((r >> 8))
    i=$((i + 1))
done
bed_report garbage "$i"
bystander_ok garbage
ecam_same garbage

# Back to its first config (BARs, command and capability registers), and its driver.
dd if=/tmp/victim.cfg of="$vdir/config" bs=4 count=64 conv=notrunc 2>/dev/null
echo "$vbdf" >/sys/bus/pci/drivers_probe 2>/dev/null
sleep 1
drv=none
[ -e "$vdir/driver" ] && drv="$(basename "$(readlink "$vdir/driver")")"
bed_report victim_after "$drv"

# The bystander's disk check, its line for L0 (the victim's is written in run 2 only).
name="$(bed_disk_name "$bdisk")"
printf 'PASSVM-L2-WROTE name=%s\n' "$name" |
    dd of="/dev/$bdisk" bs=512 seek=$BED_WRITE_OFFSET_SECTORS conv=notrunc,sync,fsync 2>/dev/null ||
    bed_fail "bystander write failed"
bed_report wrote "$bdisk $name"
