# Helpers for bed scenarios (busybox sh in L1), sourced before
# resources/scenarios/NAME.sh. A scenario's stdout/stderr already carry the
# "L1| " prefix; passvm's output is routed by bed_passvm.

PASSVM=/bin/passvm
# L2's kernel (the bed kernel: vmlinux has the PVH entry, bzImage the 64-bit
# boot protocol) and its initramfs (resources/l2).
L2_VMLINUX=/bed/l2/vmlinux
L2_BZIMAGE=/bed/l2/bzImage
L2_INITRD=/bed/l2/initrd.cpio.gz

# A marker for the host-side test: "L1| BED key=value" (Outcome::marker).
bed_report() { echo "BED $1=$2"; }

# Fail the scenario with a reason (reported as marker "fail").
bed_fail() { echo "BED fail=$*"; exit 1; }

# The value of NAME=... on L1's kernel command line.
bed_cmdline_arg() {
    for a in $(cat /proc/cmdline); do
        case "$a" in "$1"=*) echo "${a#"$1"=}"; return 0 ;; esac
    done
    return 1
}

# PCI address of a device the launcher attached, by the name the scenario gave
# it (bed.sh --device blk:NAME; Rust: Device::Blk("NAME")). Fails if unknown.
bed_bdf() {
    entry="$(bed_cmdline_arg passvm.devices | tr ',' '\n' | grep "^$1@")" ||
        bed_fail "no device named '$1' (passvm.devices=$(bed_cmdline_arg passvm.devices))"
    echo "${entry#*@}"
}

# PCI addresses with vendor:device (hex, no 0x), e.g. 1af4:1042 (virtio-blk).
bed_find_pci() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor"):$(cat "$d/device")" = "0x${1%:*}:0x${1#*:}" ] && basename "$d"
    done
    return 0
}
bed_blk_bdfs() { bed_find_pci 1af4:1042; }

bed_driver() {
    [ -e "/sys/bus/pci/devices/$1/driver" ] && basename "$(readlink "/sys/bus/pci/devices/$1/driver")"
    return 0
}

# Sets BED_BLK_DEV to the block device L1's virtio-blk driver made of the disk at
# BDF ("vda"), or fails the scenario saying which driver holds it instead.
bed_virtio_blk_dev() {
    BED_BLK_DEV=""
    for vb in /sys/bus/pci/devices/"$1"/virtio*/block/*; do [ -e "$vb" ] && BED_BLK_DEV="${vb##*/}"; done
    [ -n "$BED_BLK_DEV" ] || bed_fail "$1 has no block device in L1 (driver $(bed_driver "$1"))"
}
bed_iommu_group() { basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"; }

# Bind a PCI device to vfio-pci the way an administrator does: unbind its
# driver, set driver_override, reprobe. Fails unless vfio-pci ends up bound.
bed_bind_vfio() {
    dev="/sys/bus/pci/devices/$1"
    [ -e "$dev" ] || bed_fail "no PCI device $1"
    [ -e "$dev/driver" ] && echo "$1" >"$dev/driver/unbind"
    echo vfio-pci >"$dev/driver_override"
    echo "$1" >/sys/bus/pci/drivers_probe
    [ "$(bed_driver "$1")" = vfio-pci ] || bed_fail "$1 is not bound to vfio-pci (driver: $(bed_driver "$1"))"
    bed_report bound "$1 group=$(bed_iommu_group "$1")"
}

# Return a device to its default driver.
bed_unbind_vfio() {
    dev="/sys/bus/pci/devices/$1"
    [ -e "$dev/driver" ] && echo "$1" >"$dev/driver/unbind"
    echo >"$dev/driver_override"
    echo "$1" >/sys/bus/pci/drivers_probe
}

# The VFIO cdev of a bound device (/dev/vfio/devices/vfioN), empty without one.
# sysfs has vfio-dev/vfioN on any kernel; only CONFIG_VFIO_DEVICE_CDEV makes it a
# character device, so the node must exist too.
bed_vfio_cdev() {
    for c in /sys/bus/pci/devices/"$1"/vfio-dev/vfio*; do
        [ -c "/dev/vfio/devices/${c##*/}" ] && echo "/dev/vfio/devices/${c##*/}"
    done
    return 0
}

# Report what the host offers a VMM: markers kvm, iommu, vfio_container,
# vfio_group (one per group node), vfio_cdev (one per cdev), each yes/no or a path.
bed_report_host() {
    for f in /dev/kvm /dev/iommu /dev/vfio/vfio; do
        case "$f" in /dev/vfio/vfio) k=vfio_container ;; *) k="${f#/dev/}" ;; esac
        if [ -c "$f" ]; then bed_report "$k" yes; else bed_report "$k" no; fi
    done
    for g in /dev/vfio/[0-9]*; do [ -c "$g" ] && bed_report vfio_group "$g"; done
    for c in /dev/vfio/devices/vfio*; do [ -c "$c" ] && bed_report vfio_cdev "$c"; done
    return 0
}

# Create an mtty mediated device (a PCI UART; own kernel only) and print its
# sysfs path, /sys/bus/mdev/devices/<uuid>.
bed_mtty_create() {
    uuid="$(cat /proc/sys/kernel/random/uuid)"
    echo "$uuid" >/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-${1:-2}/create ||
        bed_fail "cannot create an mtty mdev (is this the bed's own kernel?)"
    echo "/sys/bus/mdev/devices/$uuid"
}

# Create one SR-IOV virtual function of physical function $1; its BDF is left
# in BED_VF (not printed: bed_fail must reach the console from here). The
# PF's interface is brought up first: its driver (igb) answers a VF's mailbox
# (reset, MAC, link) from the PF's "other" MSI-X vector, which it requests
# only when the interface is opened. Drivers are not probed on the new VF
# (sriov_drivers_autoprobe=0): it goes to vfio-pci, not to L1's igbvf.
# Marker pf_link: the PF interface's state when the VF was made.
bed_make_vf() {
    pf="/sys/bus/pci/devices/$1"
    [ -e "$pf/sriov_totalvfs" ] || bed_fail "$1 has no SR-IOV capability"
    for n in "$pf"/net/*; do
        [ -e "$n" ] || bed_fail "$1 has no network interface (driver: $(bed_driver "$1"))"
        ip link set dev "${n##*/}" up || bed_fail "cannot bring up ${n##*/}, the PF's interface"
    done
    echo 0 >"$pf/sriov_drivers_autoprobe"
    echo 1 >"$pf/sriov_numvfs" || bed_fail "cannot create a VF on $1 (sriov_totalvfs=$(cat "$pf/sriov_totalvfs"))"
    BED_VF="$(basename "$(readlink "$pf/virtfn0")")"
    [ -n "$BED_VF" ] || bed_fail "$1 made no virtfn0"
    bed_report vf "$1 $BED_VF"
    for n in "$pf"/net/*; do
        bed_report pf_link "${n##*/} $(cat "$n/operstate") carrier=$(cat "$n/carrier" 2>/dev/null)"
    done
}

# The L2 kernel command line for an L2 check (resources/l2/checks/NAME.sh).
# 8250.nr_uarts=1: probing the three absent legacy UARTs costs L2 seconds of
# trapped port I/O in the nested bed; ttyS0 is the console.
bed_l2_cmdline() {
    echo "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd passvm.check=$1${2:+ $2}"
}

# While passvm PID runs, the most host MSI-X vectors VFIO gave each device at once
# (/proc/interrupts lines "vfio-msix[N](BDF)"), written to FILE as "BDF MAX" lines:
# what passvm's guest use costs the host (issue 13: vectors wired on first unmask).
bed_msix_sampler() {
    ms_pid="$1" ms_out="$2"
    : >"$ms_out"
    while kill -0 "$ms_pid" 2>/dev/null; do
        awk -v out="$ms_out" '
            FILENAME == out { max[$1] = $2; next }
            match($0, /vfio-msix\[[0-9]+\]\([^)]*\)/) {
                s = substr($0, RSTART, RLENGTH); sub(/.*\(/, "", s); sub(/\)/, "", s)
                now[s]++
            }
            END {
                for (b in now) if (now[b] > max[b]) max[b] = now[b]
                for (b in max) print b, max[b] > out
            }' "$ms_out" /proc/interrupts
        sleep 0.3
    done
}

# Injects an uncorrectable, non-fatal PCIe error (completer abort) at function BDF
# through L1's aer_inject (CONFIG_PCIEAER_INJECT): L1's AER driver then runs the
# recovery that calls vfio-pci's error_detected. struct aer_error_inj: bus, dev, fn,
# pad, uncor_status, cor_status, header_log[4], domain (32 bytes, little-endian).
bed_aer_inject() {
    ai_dom=$((0x${1%%:*})) ai_rest="${1#*:}"
    ai_bus=$((0x${ai_rest%%:*})) ai_df="${ai_rest#*:}"
    ai_dev=$((0x${ai_df%%.*})) ai_fn=$((${ai_df#*.}))
    [ -c /dev/aer_inject ] || { echo "no /dev/aer_inject in L1"; return 1; }
    # bus dev fn pad, uncor_status PCI_ERR_UNC_COMP_ABORT (bit 15: non-fatal under
    # the default severities), cor_status 0, header_log 0 x 16 bytes, domain.
    ai_fmt=""
    for ai_b in "$ai_bus" "$ai_dev" "$ai_fn" 0 0 128 0 0 0 0 0 0 \
        0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 $((ai_dom & 255)) $((ai_dom >> 8 & 255)) 0 0; do
        ai_fmt="$ai_fmt$(printf '\\%03o' "$ai_b")"
    done
    # One write of the whole struct: the driver takes no partial one.
    printf "$ai_fmt" >/dev/aer_inject
}

# While passvm PID runs, every passvm.hang_probe=SECS (L1 cmdline, default 30)
# print where each of its threads is: state, CPU ticks (user/system/guest) and
# the syscall it sits in (/proc/PID/task/TID/syscall: "running", or the number
# and arguments; 16 = ioctl, e.g. KVM_RUN, 202 = futex, 232 = epoll_wait), and
# ask passvm for its vCPUs' state (SIGUSR1: RIP, RFLAGS, pending events, local
# APIC, on "VMM| " lines). A hung scenario then shows in its log whether a vCPU
# is stuck in the guest (and where), in the kernel or on a lock of passvm's
# own. Lines: "L1| HANG ...".
bed_hang_probe() {
    hp_every="$(bed_cmdline_arg passvm.hang_probe || echo 30)"
    hp_n=0
    hp_s=0
    # One-second steps: the probe ends within a second of passvm (a long sleep
    # would keep the console pipe open, and L1's init waiting, after it).
    while sleep 1 && [ -d "/proc/$1" ]; do
        hp_s=$((hp_s + 1))
        [ $((hp_s % hp_every)) -eq 0 ] || continue
        hp_n=$((hp_n + 1))
        for hp_t in /proc/"$1"/task/*; do
            # comm may hold spaces: take the fields after its closing ")".
            hp_stat="$(sed 's/^.*) //' "$hp_t/stat" 2>/dev/null)" || continue
            set -- "$1" $hp_stat
            # After the shift by one: state=$2 utime=$13 stime=$14 guest=$42.
            echo "HANG #$hp_n tid=${hp_t##*/} comm=$(cat "$hp_t/comm" 2>/dev/null) state=$2" \
                "utime=${13} stime=${14} guest=${42} syscall=$(cat "$hp_t/syscall" 2>/dev/null)"
        done
        kill -USR1 "$1" 2>/dev/null
        [ "$hp_n" -eq 1 ] && bed_trace_dump
    done
}

# passvm.trace=1 on L1's command line (bed.sh: PASSVM_BED_L1_APPEND): from the
# start of each passvm run L1's kernel records where an interrupt for L2 could
# go missing: every entry into L2 and exit from it (kvm_exit's intr_info is
# SVM's EXITINTINFO, an event cut off by the exit), every interrupt L1's KVM
# injects (kvm_inj_virq, with its reinjected flag) or accepts into L2's local
# APIC, the hrtimers that drive L2's TSC deadline and L1's own, and L1's own
# LAPIC timer interrupts. bed_trace_dump prints the newest part as
# "L1| TRACE ..." lines (the hang probe does at its first report, when a run
# has taken far longer than any scenario's L2 needs).
BED_TRACE=/sys/kernel/tracing
bed_trace_start() {
    [ "$(bed_cmdline_arg passvm.trace)" = 1 ] || return 0
    [ -d "$BED_TRACE/events" ] || mount -t tracefs tracefs "$BED_TRACE" 2>/dev/null ||
        { echo "passvm.trace=1: no tracefs in this kernel"; return 0; }
    echo 0 >"$BED_TRACE/tracing_on"
    echo >"$BED_TRACE/trace"
    echo 8192 >"$BED_TRACE/buffer_size_kb"
    for e in kvm/kvm_entry kvm/kvm_exit kvm/kvm_inj_virq kvm/kvm_apic_accept_irq \
        timer/hrtimer_start timer/hrtimer_expire_entry irq_vectors/local_timer_entry \
        irq_vectors/reschedule_entry irq_vectors/call_function_single_entry \
        ipi/ipi_send_cpu sched/sched_wakeup sched/sched_switch; do
        echo 1 >"$BED_TRACE/events/$e/enable" || echo "passvm.trace=1: no event $e"
    done
    echo 1 >"$BED_TRACE/tracing_on"
}
bed_trace_dump() {
    [ "$(bed_cmdline_arg passvm.trace)" = 1 ] && [ -e "$BED_TRACE/tracing_on" ] || return 0
    echo 0 >"$BED_TRACE/tracing_on"
    # L1's own ticks fill most of the buffer: keep what concerns L2, the newest
    # ${1:-60} of each: KVM's LAPIC timer for L2 (apic_timer_fn: armed by the
    # vCPU thread when L2 writes its TSC deadline, expiring in L1's interrupt);
    # KVM's events; the vCPU threads' wakeups and switches; IPIs. Function
    # addresses are named from the kernel's System.map.
    echo "TRACE L2's LAPIC timer in L1, KVM's events, vCPU wakeups and IPIs:"
    awk -v n="${1:-60}" '
        FILENAME != "-" { sym["0x" $1] = $2; next }
        { if (match($0, /function=0x[0-9a-f]+/)) {
              a = substr($0, RSTART + 9, RLENGTH - 9)
              if (a in sym) $0 = substr($0, 1, RSTART + 8) sym[a] substr($0, RSTART + RLENGTH)
          }
          line[NR] = $0 }
        function keep(kind, l) { c[kind]++; k[kind, c[kind]] = l }
        END {
            for (i = 1; i <= NR; i++) {
                l = line[i]
                if (l ~ /function=apic_timer_fn/) keep("timer", l)
                else if (l ~ / kvm_[a-z_]+:/) keep("kvm", l)
                else if (l ~ /sched_(wakeup|switch):/ && l ~ /vcpu[0-9]/) keep("sched", l)
                else if (l ~ /ipi_send_cpu:|reschedule_entry:|call_function_single_entry:/) keep("ipi", l)
            }
            split("timer kvm sched ipi", kinds, " ")
            for (j = 1; j <= 4; j++)
                for (i = (c[kinds[j]] > n ? c[kinds[j]] - n + 1 : 1); i <= c[kinds[j]]; i++)
                    print kinds[j] " " k[kinds[j], i]
        }' /bed/l2/System.map - <"$BED_TRACE/trace" | sed 's/^/TRACE /'
}

# Run passvm with its stdout (the guest's serial console) shown as "L2| ..." and
# its stderr as "VMM| ...", straight on the console. Returns passvm's exit
# status and reports markers passvm_rc and passvm_ms (wall time).
# stdin is /dev/null: the console is L1's, not the guest's.
BED_PV_RUNS=0
bed_passvm() {
    BED_PV_RUNS=$((BED_PV_RUNS + 1))
    pv_fifo="/tmp/.passvm-$BED_PV_RUNS"
    mkfifo "$pv_fifo.out" "$pv_fifo.err"
    awk '{ print "L2| " $0; fflush() }' <"$pv_fifo.out" >&3 &
    p_out=$!
    awk '{ print "VMM| " $0; fflush() }' <"$pv_fifo.err" >&3 &
    p_err=$!
    bed_trace_start
    t0="$(cut -d' ' -f1 /proc/uptime)"
    "$PASSVM" "$@" </dev/null >"$pv_fifo.out" 2>"$pv_fifo.err" &
    pv_pid=$!
    bed_hang_probe "$pv_pid" &
    p_probe=$!
    bed_msix_sampler "$pv_pid" "$pv_fifo.msix" &
    p_msix=$!
    wait "$pv_pid"
    pv_rc=$?
    wait "$p_probe" "$p_msix"
    while read -r ms_bdf ms_max; do
        bed_report l1_msix "$ms_bdf $ms_max"
    done <"$pv_fifo.msix"
    rm -f "$pv_fifo.msix"
    t1="$(cut -d' ' -f1 /proc/uptime)"
    wait "$p_out" "$p_err"
    rm -f "$pv_fifo.out" "$pv_fifo.err"
    # Killed by a fault signal (SIGSEGV, SIGBUS, SIGILL...): L1's kernel logged
    # the faulting thread, address, instruction pointer and the binary's load
    # address (at KERN_INFO, below the console's level), the one record of
    # where it died: `addr2line -e target/x86_64-unknown-linux-gnu/release/passvm
    # $((ip - base))` names the function.
    if [ "$pv_rc" -gt 128 ]; then
        dmesg 2>/dev/null | grep -E 'segfault at|trap |general protection|Code: ' |
            tail -n 6 | sed 's/^/FATAL /'
    fi
    bed_report passvm_rc "$pv_rc"
    bed_report passvm_ms "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%d", (b - a) * 1000 }')"
    return "$pv_rc"
}

# passvm --dry-run with one --device NAME (plus extra options), for the discovery
# scenarios: prints the output indented, reports marker plan="NAME|rc=N|LINE"
# (LINE: the plan's device line, else passvm's error line) and leaves the whole
# output in BED_DRY_OUT.
bed_dry_run() {
    dr_name="$1"
    shift
    BED_DRY_OUT="$("$PASSVM" --kernel "$L2_VMLINUX" --memory size=256M --dry-run --device "$dr_name" "$@" 2>&1)"
    dr_rc=$?
    echo "$BED_DRY_OUT" | sed 's/^/    /'
    dr_line="$(echo "$BED_DRY_OUT" | grep -F -- ' -> ' | head -n 1)"
    [ -n "$dr_line" ] || dr_line="$(echo "$BED_DRY_OUT" | grep '^passvm: ' | head -n 1)"
    bed_report plan "$dr_name|rc=$dr_rc|$dr_line"
}

# The peak RSS in KiB from a `busybox time -v -o FILE` report. BusyBox (1.35, the
# bed's) prints ru_maxrss through its pages-to-KiB conversion (miscutils/time.c,
# ptok), but Linux already reports ru_maxrss in KiB, so the figure it prints is
# 4x too large on 4 KiB pages: checked against /proc/PID/status VmHWM, 35196 kB
# where busybox said 140368. Empty when the file has no figure.
bed_time_rss_kib() {
    sed -n 's/.*Maximum resident set size (kbytes): //p' "$1" | awk '{ printf "%d", $1 / 4 }'
}
