//! The nested bed itself (issue 2): L1 on each kernel, a virtio-blk bound to vfio-pci,
//! and what a VMM then finds. Both run `resources/scenarios/bed-vfio.sh`; the
//! assertions are on the markers L1 reports, so they fail if the device is not bound
//! or the kernel lacks what the test expects.

mod bed;

use bed::{Device, L1Kernel, Outcome, Scenario};

/// The disk's BDF and IOMMU group from the `bound` marker ("BDF group=N").
fn bound(out: &Outcome) -> (String, String) {
    let bound = out
        .marker("bound")
        .expect("L1 reported no device bound to vfio-pci");
    let (bdf, group) = bound
        .split_once(" group=")
        .unwrap_or_else(|| panic!("malformed bound marker {bound:?}"));
    (bdf.to_owned(), group.to_owned())
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_bed -- --ignored"]
fn own_kernel_offers_kvm_iommufd_and_a_vfio_cdev() {
    let out = Scenario::new("bed-vfio").l1(L1Kernel::Own).disk("d0").run();
    out.assert_ok();

    let (bdf, group) = bound(&out);
    assert_eq!(bdf, "0000:00:10.0", "d0 is the first root-bus device");
    assert_eq!(
        out.marker("driver_before"),
        Some("0000:00:10.0 virtio-pci"),
        "L1's virtio driver had the disk before the bind"
    );
    assert_eq!(out.marker("kvm"), Some("yes"), "nested KVM: /dev/kvm in L1");
    assert_eq!(
        out.marker("iommu"),
        Some("yes"),
        "iommufd: /dev/iommu in L1"
    );

    // The cdev the device's sysfs names must be the one in /dev, and the only one.
    let sysfs = out.marker("sysfs_cdev").expect("sysfs_cdev marker");
    let cdev = sysfs
        .strip_prefix(&format!("{bdf} "))
        .unwrap_or_else(|| panic!("sysfs_cdev {sysfs:?} is not for {bdf}"));
    assert!(
        cdev.starts_with("/dev/vfio/devices/vfio"),
        "{bdf} has no vfio-dev/vfioN in sysfs ({sysfs:?})"
    );
    assert_eq!(out.markers("vfio_cdev"), vec![cdev]);
    // The group interface stays available next to the cdev.
    assert_eq!(
        out.markers("vfio_group"),
        vec![format!("/dev/vfio/{group}")]
    );
    assert_eq!(out.marker("vfio_container"), Some("yes"));
    assert_eq!(
        out.marker("modules"),
        None,
        "the bed kernel has everything built in"
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_bed -- --ignored"]
fn debian_kernel_offers_the_vfio_group_only() {
    let out = Scenario::new("bed-vfio")
        .l1(L1Kernel::Debian)
        .disk("d0")
        .run();
    out.assert_ok();

    let modules = out
        .marker("modules")
        .expect("L1 reported no module loading");
    for m in [
        "kvm_amd",
        "virtio_iommu",
        "vfio",
        "vfio_iommu_type1",
        "vfio_pci",
    ] {
        assert!(
            modules.split(',').any(|x| x == m),
            "module {m} was not loaded (loaded: {modules})"
        );
    }
    let (bdf, group) = bound(&out);
    assert_eq!(bdf, "0000:00:10.0");
    assert_eq!(out.marker("driver_before"), Some("0000:00:10.0 virtio-pci"));
    assert_eq!(out.marker("kvm"), Some("yes"), "nested KVM: /dev/kvm in L1");
    assert_eq!(
        out.marker("iommu"),
        Some("no"),
        "Debian 6.12 has no CONFIG_IOMMUFD"
    );
    assert_eq!(
        out.markers("vfio_group"),
        vec![format!("/dev/vfio/{group}")]
    );
    assert_eq!(out.marker("vfio_container"), Some("yes"));
    assert!(
        out.markers("vfio_cdev").is_empty(),
        "no /dev/vfio/devices without iommufd"
    );
    assert_eq!(
        out.marker("sysfs_cdev"),
        Some(format!("{bdf} none").as_str())
    );
}

/// One `dev` marker of bed-topology: "NAME BDF VVVV:DDDD group=N reset=a,b".
struct Dev {
    bdf: String,
    ids: String,
    group: String,
    reset: String,
}

fn devices(out: &Outcome) -> std::collections::BTreeMap<String, Dev> {
    out.markers("dev")
        .into_iter()
        .map(|m| {
            let f: Vec<&str> = m.split(' ').collect();
            assert_eq!(f.len(), 5, "malformed dev marker {m:?}");
            let dev = Dev {
                bdf: f[1].to_owned(),
                ids: f[2].to_owned(),
                group: f[3].trim_start_matches("group=").to_owned(),
                reset: f[4].trim_start_matches("reset=").to_owned(),
            };
            (f[0].to_owned(), dev)
        })
        .collect()
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_bed -- --ignored"]
fn every_device_kind_has_the_topology_it_promises() {
    let out = Scenario::new("bed-topology")
        .device(Device::blk("d0"))
        .device(Device::blk_root_port("rp0"))
        .device(Device::blk_multifunction("mfa", "mfb"))
        .device(Device::e1000e("nic0"))
        .device(Device::Edu("edu0".into()))
        .device(Device::Nvme("n0".into()))
        .device(Device::Ahci("s0".into()))
        .device(Device::Serial("u0".into()))
        .device(Device::Ivshmem("m0".into()))
        .device(Device::Igb("pf0".into()))
        .run();
    out.assert_ok();
    let devs = devices(&out);
    let names: Vec<&str> = devs.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["d0", "edu0", "m0", "mfa", "mfb", "n0", "nic0", "pf0", "rp0", "s0", "u0"]
    );
    let bars = |name: &str| -> Vec<String> {
        out.markers("bars")
            .into_iter()
            .find_map(|m| m.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no bars marker for {name}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };

    let d0 = &devs["d0"];
    assert_eq!(
        (d0.bdf.as_str(), d0.ids.as_str()),
        ("0000:00:10.0", "1af4:1042")
    );
    assert_eq!(
        d0.reset, "none",
        "a root-bus virtio-blk has no reset method"
    );

    let rp0 = &devs["rp0"];
    assert_eq!(rp0.bdf, "0000:01:00.0", "behind the first root port");
    assert!(
        rp0.reset.split(',').any(|m| m == "flr"),
        "rp0 resets: {}",
        rp0.reset
    );

    let (mfa, mfb) = (&devs["mfa"], &devs["mfb"]);
    assert_eq!(
        (mfa.bdf.as_str(), mfb.bdf.as_str()),
        ("0000:00:12.0", "0000:00:12.1")
    );
    assert_eq!(mfa.group, mfb.group, "functions of one slot share a group");

    assert_eq!(devs["nic0"].ids, "8086:10d3");
    assert_eq!(devs["edu0"].ids, "1234:11e8");

    // NVMe: one 16 KiB register BAR that also holds the MSI-X table.
    assert_eq!(devs["n0"].ids, "1b36:0010");
    assert_eq!(bars("n0")[0], "m16384");
    // AHCI: an I/O BAR (index/data pair) and the AHCI registers in BAR 5.
    assert_eq!(devs["s0"].ids, "8086:2922");
    let s0 = bars("s0");
    assert!(s0[4].starts_with('i') && s0[5].starts_with('m'), "{s0:?}");
    // The UART: one 8-byte I/O BAR and nothing else.
    assert_eq!(devs["u0"].ids, "1b36:0002");
    assert_eq!(bars("u0"), ["i8", "-", "-", "-", "-", "-"]);
    // ivshmem: BAR 2 is the 8 GiB backing file.
    assert_eq!(devs["m0"].ids, "1af4:1110");
    assert_eq!(bars("m0")[2], format!("m{}", 8u64 << 30));
    // igb: an SR-IOV PF behind the second root port.
    assert_eq!(devs["pf0"].ids, "8086:10c9");
    assert_eq!(devs["pf0"].bdf, "0000:02:00.0");
    assert_eq!(out.marker("sriov"), Some("pf0 7"), "82576: up to 7 VFs");

    // Every other device has a group of its own.
    let mut groups: Vec<&str> = devs
        .iter()
        .filter(|(n, _)| n.as_str() != "mfb")
        .map(|(_, d)| d.group.as_str())
        .collect();
    assert!(
        groups.iter().all(|g| !g.is_empty()),
        "a device has no IOMMU group"
    );
    groups.sort_unstable();
    groups.dedup();
    assert_eq!(groups.len(), 10, "groups overlap: {:?}", out.markers("dev"));

    let mdev = out.marker("mdev").expect("mtty mdev marker");
    assert!(mdev.starts_with("mtty group="), "{mdev}");
}

/// The README's demo (`resources/bed.sh demo` runs the same scenario): passvm passes
/// the disk through and L2's own virtio driver reads its header and writes to it.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_bed -- --ignored"]
fn demo_guest_uses_the_passed_through_disk() {
    let out = Scenario::new("demo")
        .disk("d0")
        .timeout(std::time::Duration::from_secs(480))
        .run();
    out.assert_ok();
    assert_eq!(out.marker("passvm_rc"), Some("0"), "passvm's exit status");
    assert_eq!(out.l2_rc(), Some(0), "L2's disk check");
    assert_eq!(out.l2_markers("disk"), vec!["vda d0"], "L2 read the header");
    assert!(out.l2_wrote("d0"), "L2's write is in L0's disk image");
}

/// The console protocol parser, on a log shaped like a real run (no bed needed).
#[test]
fn outcome_reads_markers_and_results_by_level() {
    let log = "\
[bed] workdir /tmp/x
[    2.1] kvm_intel: VMX not supported by CPU 0
L1| PASSVM-BED: L1 up
L1| BED bound=0000:00:10.0 group=0
L1| BED vfio_group=/dev/vfio/0
L1| BED vfio_group=/dev/vfio/1
VMM| passvm: BED x=not-a-marker
L2| BED disk=vda d0
L2| PASSVM-L2-RESULT check=disk rc=0
L1| BED passvm_rc=0
PASSVM-BED-RESULT scenario=demo rc=3
";
    let out = Outcome {
        scenario: "demo".into(),
        status: Some(0),
        signal: None,
        stopped: None,
        elapsed: std::time::Duration::from_secs(1),
        timeout: bed::DEFAULT_TIMEOUT,
        log: log.into(),
        log_path: "/nonexistent/serial.log".into(),
        workdir: "/nonexistent".into(),
        disks: Default::default(),
        scratch: Vec::new(),
        hung_attempts: Vec::new(),
    };
    assert_eq!(out.marker("bound"), Some("0000:00:10.0 group=0"));
    assert_eq!(out.markers("vfio_group"), ["/dev/vfio/0", "/dev/vfio/1"]);
    assert_eq!(out.marker("disk"), None, "an L2 marker is not an L1 one");
    assert_eq!(out.l2_marker("disk"), Some("vda d0"));
    assert_eq!(out.marker("x"), None, "passvm's stderr carries no markers");
    assert_eq!(out.l2_rc(), Some(0));
    assert_eq!(out.scenario_rc(), Some(3));
    assert!(!out.succeeded(), "a scenario that returned 3 failed");
    assert_eq!(out.summary(), "QEMU exited, scenario rc=3");
    assert_eq!(out.l1_lines().count(), 5);
    assert_eq!(out.cpu_crash(), None, "nothing crashed");
    assert_eq!(
        out.vmm_lines().collect::<Vec<_>>(),
        ["passvm: BED x=not-a-marker"]
    );
    let mut crashed = out;
    crashed.log = "VMM| passvm: guest triple-faulted on vCPU 1 (...)\nL1| BED passvm_rc=3\n".into();
    assert_eq!(
        crashed.cpu_crash(),
        Some("passvm: guest triple-faulted on vCPU 1 (...)"),
        "retried like a hang"
    );
    assert_eq!(crashed.l0_crash(), None, "QEMU exited by itself");
    // L1's kernel dying in an exception handler (ci4 of 2026-12-02), and L2's doing the
    // same, which is the guest's business and shows through passvm instead.
    crashed.log = "L2| [    3.16] igb: Intel(R) Gigabit Ethernet Network Driver\n\
                   [    7.185035] BUG: TASK stack guard page was hit at 000000008ee0be28\n\
                   [    7.193075] Oops: stack guard page: 0000 [#1] SMP\n\
                   [    7.197018] Kernel panic - not syncing: Fatal exception in interrupt\n"
        .into();
    assert_eq!(
        crashed.cpu_crash(),
        Some("[    7.185035] BUG: TASK stack guard page was hit at 000000008ee0be28")
    );
    crashed.log = "L2| [    1.0] Oops: general protection fault\n".into();
    assert_eq!(crashed.cpu_crash(), None, "L2's oops is not L1's");
    // L2's kernel faulting on `iret` until a double fault (CI of 2026-12-03, a boot
    // with no device): its CPU state broke under it, as L1's did above.
    crashed.log = "L2| [    1.741417]  </#DF>\n\
                   L2| [    1.741417] WARNING: stack recursion on stack type 5\n\
                   L2| [    1.741417] Kernel panic - not syncing: Fatal exception in interrupt\n"
        .into();
    assert_eq!(
        crashed.cpu_crash(),
        Some("[    1.741417] WARNING: stack recursion on stack type 5")
    );
    assert!(bed::exception_stack_recursion(
        "[    1.7] Oops: double fault: 0000 [#1] PREEMPT SMP NOPTI"
    ));

    // The two L0 crashes of the 2026-12-01 CI run, as their logs ended.
    let mut l0 = crashed;
    l0.status = None;
    l0.signal = Some(libc::SIGABRT);
    l0.log = "Booting from ROM..qemu-system-x86_64: /x/include/exec/ram_addr.h:91: \
              ramblock_ptr: Assertion `offset_in_ramblock(block, offset)' failed.\n"
        .into();
    assert_eq!(
        l0.l0_crash().as_deref(),
        Some(
            "SIGABRT: qemu-system-x86_64: /x/include/exec/ram_addr.h:91: ramblock_ptr: \
             Assertion `offset_in_ramblock(block, offset)' failed."
        )
    );
    l0.signal = Some(libc::SIGSEGV);
    l0.log = "Booting from ROM..\n".into();
    assert_eq!(l0.l0_crash().as_deref(), Some("SIGSEGV"));
    l0.signal = Some(libc::SIGKILL);
    assert_eq!(
        l0.l0_crash(),
        None,
        "a kill is the bed's or the OOM killer's, not a fault"
    );
    l0.signal = Some(libc::SIGSEGV);
    l0.stopped = Some(bed::Stopped::Silent(std::time::Duration::from_secs(15)));
    assert_eq!(l0.l0_crash(), None, "the bed stopped it first");
}

/// The lockup detector recognises the reports that hung nested runs produced
/// (L2's RCU stall, relayed through L1), and nothing of a normal boot.
#[test]
fn lockup_reports_are_recognised() {
    assert!(bed::is_lockup_report(
        "L2| [   30.926349] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:"
    ));
    assert!(bed::is_lockup_report(
        "[   88.1] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [swapper/1:0]"
    ));
    assert!(bed::is_probe_line(
        "L1| HANG #1 tid=81 comm=vcpu0 state=R utime=4173 stime=212 guest=4081 syscall=running"
    ));
    assert!(bed::is_probe_line(
        "VMM| [2026-11-25T23:16:49Z WARN  passvm::vcpu] vcpu1: rip=0x1000000 rsp=0x0"
    ));
    assert!(!bed::is_probe_line(
        "L2| [    9.870832] sh (46): drop_caches: 3"
    ));
    for normal in [
        "L2| [    0.135266] rcu: Hierarchical RCU implementation.",
        "L2| [    5.245879] kvm_intel: VMX not supported by CPU 1",
        "L1| BED passvm_rc=0",
    ] {
        assert!(!bed::is_lockup_report(normal), "{normal}");
    }
}

/// A run whose console falls silent is stopped as hung, retried, and reported with
/// the earlier attempt, instead of waiting for its deadline.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_bed -- --ignored"]
fn a_silent_run_is_stopped_and_retried() {
    let limit = std::time::Duration::from_secs(15);
    let out = Scenario::new("bed-silent")
        .silence_limit(limit)
        .retries(1)
        .run();
    assert_eq!(out.stopped, Some(bed::Stopped::Silent(limit)));
    assert!(!out.succeeded());
    assert_eq!(out.hung_attempts.len(), 1, "{:?}", out.hung_attempts);
    assert!(out.log.contains("L1| going silent"), "the scenario ran");
    assert!(
        out.elapsed < std::time::Duration::from_secs(120),
        "stopped long before the deadline: {:?}",
        out.elapsed
    );
}

/// The journal's slow-pass rules and line format (`bed.sh test` and `bed.sh soak`
/// read these lines for their summaries).
mod journal {
    use super::bed::journal::{frozen_clock, slow_against, slow_sign, End, Entry};
    use std::time::Duration;

    #[test]
    fn lost_timer_wakeups_are_slow_signs() {
        let log = "L2| [  12.0] rcu: rcu_sched kthread timer wakeup didn't happen for 5249 jiffies! g-1 f0x0\nL2| ok\n";
        assert!(slow_sign(log).is_some_and(|l| l.contains("5249 jiffies")));
        assert_eq!(slow_sign("L2| all fine\n"), None);
    }

    #[test]
    fn a_frozen_l2_clock_is_named_with_its_timestamp_and_length() {
        let line = |ts: &str| format!("L2| [    {ts}] x86/fpu: something\n");
        let mut log: String = (0..13).map(|_| line("0.000000")).collect();
        log += &(0..7).map(|_| line("1.260308")).collect::<String>();
        log += "VMM| interleaved\n";
        assert_eq!(
            frozen_clock(&log),
            None,
            "a good boot: 7 lines at the hand-over"
        );
        log += &(0..95).map(|_| line("1.801950")).collect::<String>();
        log += &line("24.140796");
        assert_eq!(
            frozen_clock(&log).as_deref(),
            Some("L2's clock stood still at 1.801950 s for 95 console lines")
        );
        let zeros: String = (0..60).map(|_| line("0.000000")).collect();
        assert_eq!(
            frozen_clock(&zeros),
            None,
            "the pre-clock 0.000000 lines do not count"
        );
    }

    #[test]
    fn slow_means_twice_the_median_and_twenty_seconds_more() {
        let h = [10.0, 12.0, 11.0, 30.0];
        // The median of four (the upper middle) is 12 s.
        assert_eq!(slow_against(Duration::from_secs(20), &h), None);
        assert_eq!(slow_against(Duration::from_secs(30), &h), None);
        assert_eq!(
            slow_against(Duration::from_secs(40), &h).as_deref(),
            Some("took 40 s, usually 12 s")
        );
        assert_eq!(slow_against(Duration::from_secs(400), &h[..2]), None);
    }

    #[test]
    fn lines_have_eight_fields_and_no_stray_tabs() {
        let e = Entry {
            test: "demo_guest".into(),
            scenario: "demo".into(),
            end: End::Hung("killed after 90 s\twithout progress".into()),
            attempts: 2,
            elapsed: Duration::from_millis(12_345),
            slow: None,
            retried: vec!["a.log: hung".into(), "b.log: crash".into()],
        };
        let line = e.line();
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 8, "{line}");
        assert_eq!(&f[..6], ["demo_guest", "demo", "hung", "2", "12.3", "-"]);
        assert_eq!(f[6], "killed after 90 s without progress");
        assert_eq!(f[7], "a.log: hung | b.log: crash");
    }
}
