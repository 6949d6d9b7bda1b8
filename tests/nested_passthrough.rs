//! PCI passthrough into L2 (issue 5).
//!
//! * A host-side test (plain `cargo test`): a `--device` that cannot be used stops passvm
//!   with exit status 2 and discovery's one-line reason, before KVM is touched.
//! * Nested scenarios (`--ignored`; QEMU TCG, a minute or two each), asserting on what L2
//!   reports about its own devices and interrupts and on L0's disk images:
//!   `resources/scenarios/pt-blk.sh` (virtio-blk disks, with the L2 check
//!   `resources/l2/checks/pt-blk.sh`) and `pt-mtty.sh` (the mtty mdev, `pt-uart.sh`).
//! * A benchmark (`--ignored`, prints figures, asserts no times): `pt-bench.sh`.

mod bed;

use std::process::Command;
use std::time::Duration;

use bed::{Device, L1Kernel, Outcome, Scenario};

/// Where L2's pt-blk check writes "PASSVM-PT-RUN n=N name=NAME" (sector 4096).
const RUN_MARKER_OFFSET: u64 = 2 << 20;

#[test]
fn a_device_that_does_not_exist_is_refused_before_kvm() {
    let k = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(k.path(), b"not a kernel").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_passvm"))
        .args(["--kernel", k.path().to_str().unwrap()])
        .args(["--device", "0000:1f:1f.7"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("passvm: 0000:1f:1f.7"), "{err}");
    assert!(err.contains("passvm devices"), "the fix is named: {err}");
    assert!(out.stdout.is_empty(), "nothing on the guest console");
}

/// One `irq=COUNT CHIP HWIRQ-TYPE NAME` marker of L2's pt-blk check.
#[derive(Debug)]
struct IrqLine {
    count: u64,
    chip: String,
    kind: String,
    name: String,
}

fn irq_lines(out: &Outcome) -> Vec<IrqLine> {
    out.l2_markers("irq")
        .into_iter()
        .filter_map(|m| {
            let w: Vec<&str> = m.split_whitespace().collect();
            Some(IrqLine {
                count: w.first()?.parse().ok()?,
                chip: w.get(1)?.to_string(),
                kind: w.get(2).unwrap_or(&"").to_string(),
                name: w.last()?.to_string(),
            })
        })
        .collect()
}

/// What every pt-blk run must show: each of `runs` passvm runs ended by L2's reboot with
/// 0; in each, L2's virtio-pci driver bound every disk and virtio_blk read the name L0
/// wrote in its header; L0's images hold what the last run wrote; the disks are still
/// on vfio-pci in L1 afterwards.
fn assert_disks_work(out: &Outcome, disks: &[&str], runs: usize) {
    assert_disks_work_then(out, disks, runs, "vfio-pci");
}

/// [`assert_disks_work`], with the disks on `l1_driver` in L1 after the last run.
fn assert_disks_work_then(out: &Outcome, disks: &[&str], runs: usize, l1_driver: &str) {
    out.assert_ok();
    assert_eq!(
        out.markers("passvm_rc"),
        vec!["0"; runs],
        "each run exits 0"
    );
    let results: Vec<&str> = out
        .l2_lines()
        .filter(|l| l.starts_with("PASSVM-L2-RESULT "))
        .collect();
    assert_eq!(
        results,
        vec!["PASSVM-L2-RESULT check=pt-blk rc=0"; runs],
        "L2's check passed in every run"
    );
    let drivers = out.l2_markers("driver");
    assert_eq!(drivers.len(), disks.len() * runs, "{drivers:?}");
    assert!(
        drivers.iter().all(|d| d.ends_with(" virtio-pci")),
        "L2's own virtio-pci driver: {drivers:?}"
    );
    let mut seen: Vec<&str> = out
        .l2_markers("disk")
        .into_iter()
        .filter_map(|m| m.split_whitespace().nth(1))
        .collect();
    seen.sort_unstable();
    let mut want: Vec<&str> = disks.iter().flat_map(|d| vec![*d; runs]).collect();
    want.sort_unstable();
    assert_eq!(seen, want, "L2 read each disk's header as L0 wrote it");
    for d in disks {
        assert!(out.l2_wrote(d), "L0's {d}.img holds L2's line at 1 MiB");
        let want = format!("PASSVM-PT-RUN n={runs} name={d}\n");
        let got = out.read_disk(d, RUN_MARKER_OFFSET, want.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "L0's {d}.img: the last run's marker at 2 MiB"
        );
    }
    let after = out.markers("after");
    assert_eq!(after.len(), disks.len());
    assert!(
        after.iter().all(|a| a.ends_with(&format!(" {l1_driver}"))),
        "in L1 afterwards: {after:?}"
    );
}

/// Every disk's request queue interrupted L2 through MSI-X, in every run.
fn assert_msix(out: &Outcome, disks: usize, runs: usize) {
    let irqs = irq_lines(out);
    let msix_req = irqs
        .iter()
        .filter(|i| i.chip.starts_with("PCI-MSIX") && i.name.contains("-req") && i.count > 0)
        .count();
    assert!(
        msix_req >= disks * runs,
        "a firing MSI-X request vector per disk and run: {irqs:?}"
    );
    assert!(
        !irqs.iter().any(|i| i.chip == "IO-APIC"),
        "no virtio INTx line once MSI-X is on: {irqs:?}"
    );
}

fn pt_blk(l1: L1Kernel, disks: &[&str], params: &str) -> Outcome {
    let mut s = Scenario::new("pt-blk")
        .l1(l1)
        .timeout(Duration::from_secs(420));
    for d in disks {
        s = s.device(Device::blk(d));
    }
    if !params.is_empty() {
        s = s.l1_append(params);
    }
    s.run()
}

/// 1. iommufd + the device cdev on the bed's kernel, MSI-X.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn virtio_blk_over_iommufd_cdev() {
    let out = pt_blk(
        L1Kernel::Own,
        &["d0"],
        "passvm.pt.backend=iommufd passvm.pt.name=cdev passvm.pt.memory=size=256M+dma_map=background",
    );
    assert_disks_work(&out, &["d0"], 1);
    assert_msix(&out, 1, 1);
    assert_eq!(out.marker("iommu"), Some("yes"));
    assert!(
        out.vmm_lines()
            .any(|l| l.contains("/dev/vfio/devices/vfio") && l.contains("backend iommufd")),
        "the plan line names the cdev and the backend"
    );
    assert_dma_map(&out, DmaMapTiming::Background);
}

/// When passvm says it mapped guest RAM (`dma_map=`), which the disk checks above prove
/// complete before L2's driver used it.
#[derive(Clone, Copy, PartialEq)]
enum DmaMapTiming {
    Background,
    BeforeBoot,
}

/// The start-up line (logged when the vCPUs are about to run) counts the DMA map in its
/// phases only when it ran before the boot, and one "DMA-mapped" line reports it: before
/// the start-up line when it ran first, anywhere otherwise (it ends beside the boot).
fn assert_dma_map(out: &Outcome, timing: DmaMapTiming) {
    let lines: Vec<&str> = out.vmm_lines().collect();
    let startup = lines
        .iter()
        .position(|l| l.contains("start-up "))
        .expect("passvm's start-up timings line");
    let mapped: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("DMA-mapped "))
        .collect();
    assert_eq!(mapped.len(), 1, "one DMA map: {lines:#?}");
    let phases = lines[startup];
    match timing {
        DmaMapTiming::Background => assert!(
            phases.contains(" passthrough ") && !phases.contains("dma map"),
            "the map is not a start-up phase: {phases}"
        ),
        DmaMapTiming::BeforeBoot => {
            assert!(phases.contains("dma map + passthrough"), "{phases}");
            assert!(mapped[0] < startup, "mapped before the vCPUs: {lines:#?}");
        }
    }
}

/// 1b. The launcher form: a privileged parent opens the cdev and /dev/iommu and passvm
/// gets only the descriptors (`--device fd=7 --iommufd-fd 8`).
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn virtio_blk_from_launcher_fds() {
    let out = pt_blk(
        L1Kernel::Own,
        &["d0"],
        "passvm.pt.backend=auto passvm.pt.name=fd",
    );
    assert_disks_work(&out, &["d0"], 1);
    assert_msix(&out, 1, 1);
    // The default (dma_map=auto) on L1's 2 cores with a 1-vCPU L2: no core to spare.
    assert!(
        out.vmm_lines().any(
            |l| l.contains("DMA map before the boot (dma_map=auto: 2 host cores for 1 vCPU(s)")
        ),
        "auto's choice is logged"
    );
    assert_dma_map(&out, DmaMapTiming::BeforeBoot);
    assert!(
        out.vmm_lines()
            .any(|l| l.contains("fd=7") && l.contains("backend iommufd")),
        "the plan line names the descriptor and the iommufd backend"
    );
}

/// 2. The legacy container + group backend on Debian's kernel (no iommufd there).
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn virtio_blk_over_legacy_groups_on_debian() {
    let out = pt_blk(
        L1Kernel::Debian,
        &["d0"],
        "passvm.pt.backend=group passvm.pt.name=bdf passvm.pt.memory=size=256M+dma_map=before-boot",
    );
    assert_disks_work(&out, &["d0"], 1);
    assert_msix(&out, 1, 1);
    assert_eq!(
        out.marker("iommu"),
        Some("no"),
        "Debian's L1 has no /dev/iommu"
    );
    assert!(out.vmm_lines().any(|l| l.contains("backend group")));
    assert_dma_map(&out, DmaMapTiming::BeforeBoot);
}

/// 3. L2 booted pci=nomsi: the disk interrupts through INTx, a level-triggered IOAPIC
///    line, and the data is still right.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn virtio_blk_over_intx_with_pci_nomsi() {
    let out = pt_blk(L1Kernel::Own, &["d0"], "passvm.pt.nomsi=1");
    assert_disks_work(&out, &["d0"], 1);
    let irqs = irq_lines(&out);
    assert!(
        irqs.iter()
            .any(|i| i.chip == "IO-APIC" && i.kind.ends_with("-fasteoi") && i.count > 0),
        "a level (fasteoi) IO-APIC line that fired: {irqs:?}"
    );
    assert!(
        !irqs.iter().any(|i| i.chip.starts_with("PCI-MSI")),
        "no MSI with pci=nomsi: {irqs:?}"
    );
    assert!(
        out.l2_lines()
            .any(|l| l.contains("PCI: Using ACPI for IRQ routing")),
        "L2 routes INTx by the DSDT's _PRT, not the MP table"
    );
}

/// 4. Two disks in two IOMMU groups, one IOAS: both work in L2.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn two_devices_in_two_groups() {
    let out = pt_blk(L1Kernel::Own, &["d0", "d1"], "");
    assert_disks_work(&out, &["d0", "d1"], 1);
    assert_msix(&out, 2, 1);
    let groups: Vec<&str> = out
        .markers("bound")
        .into_iter()
        .filter_map(|b| b.split_whitespace().nth(1))
        .collect();
    assert_eq!(groups.len(), 2);
    assert_ne!(groups[0], groups[1], "two groups: {groups:?}");
}

/// 5. The mtty mdev: L2's 8250_pci registers its ports on the I/O BARs and the bytes
///    written to each port come back (mtty loops them), through INTx without an unmask
///    eventfd.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn mtty_mdev_uart() {
    let out = Scenario::new("pt-mtty")
        .l1(L1Kernel::Own)
        .timeout(Duration::from_secs(420))
        .run();
    out.assert_ok();
    assert_eq!(out.l2_rc(), Some(0), "L2's pt-uart check");
    let drivers = out.l2_markers("driver");
    assert!(
        drivers.len() == 1 && drivers[0].ends_with(" serial"),
        "8250_pci ('serial') drives it: {drivers:?}"
    );
    let ports = out.l2_markers("port");
    assert_eq!(ports.len(), 2, "mtty-2 has two ports: {ports:?}");
    for p in &ports {
        let base = p.split_whitespace().nth(1).unwrap();
        let base = u32::from_str_radix(base.trim_start_matches("0x"), 16).unwrap();
        assert!(
            (0xc000..0x1_0000).contains(&base),
            "an I/O BAR in passvm's I/O window: {p}"
        );
    }
    let echoes = out.l2_markers("echo");
    assert_eq!(echoes.len(), 2);
    for e in echoes {
        let (tty, back) = e.split_once(' ').unwrap();
        assert_eq!(back, format!("PT-{tty}"), "looped back on {tty}");
    }
    let irqs = irq_lines(&out);
    assert_eq!(irqs.len(), 2, "one line per open port: {irqs:?}");
    assert!(
        irqs.iter()
            .all(|i| i.chip == "IO-APIC" && i.kind.ends_with("-fasteoi") && i.count > 0),
        "each port interrupted through the level-triggered IOAPIC line: {irqs:?}"
    );
    assert!(
        out.vmm_lines()
            .any(|l| l.contains("INTx EOIs forwarded by passvm")),
        "mtty cannot unmask by eventfd: passvm forwards the EOIs"
    );
}

/// 6. L2's `reboot -f` ends passvm with 0 and leaves the disk usable: a second passvm in
///    the same L1 reads and writes it again (its run marker is the one L0 finds).
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn guest_reboot_leaves_the_device_usable_for_a_second_run() {
    let out = pt_blk(L1Kernel::Own, &["d0"], "passvm.pt.runs=2");
    assert_disks_work(&out, &["d0"], 2);
    assert_msix(&out, 1, 2);
    assert_eq!(out.markers("run"), vec!["1 rc=0", "2 rc=0"]);
    assert_eq!(
        out.vmm_lines()
            .filter(|l| l.contains("guest requested reboot"))
            .count(),
        2,
        "both runs ended by the guest's reboot"
    );
}

/// 6b. The same through ACPI: L2's `poweroff -f` ends each passvm with 0 ("guest powered
///     off") and the disk works again in the second run, so the device was reset and
///     released on the way out as after a reboot.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn guest_poweroff_leaves_the_device_usable_for_a_second_run() {
    let out = pt_blk(
        L1Kernel::Own,
        &["d0"],
        "passvm.pt.runs=2 passvm.pt.l2=passvm.end=poweroff",
    );
    assert_disks_work(&out, &["d0"], 2);
    assert_eq!(out.markers("run"), vec!["1 rc=0", "2 rc=0"]);
    assert_eq!(
        out.vmm_lines()
            .filter(|l| l.contains("guest powered off"))
            .count(),
        2,
        "both runs ended by the guest's ACPI power-off"
    );
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// MiB read per measurement of pt-read.sh / pt-bench.sh (the 16 MiB disk, 8 times).
const READ_MIB: f64 = 128.0;

/// MiB/s for [`READ_MIB`] in `ms` milliseconds.
fn mib_per_s(ms: u64) -> f64 {
    READ_MIB * 1000.0 / ms.max(1) as f64
}

/// Benchmark (prints figures; asserts only that every run happened): the DMA map time
/// of 512 MiB of guest RAM per backend with 4 KiB pages and with 2 MiB hugepages, as
/// seconds per GiB, and L2's sequential read throughput of the passed-through disk next
/// to the same disk read by L1 directly. TCG timings: compare within one run only.
#[test]
#[ignore = "nested bed benchmark: cargo test --test nested_passthrough -- --ignored --nocapture bench"]
fn bench_dma_map_and_disk_read() {
    let out = Scenario::new("pt-bench")
        .l1(L1Kernel::Own)
        .device(Device::blk("d0"))
        .timeout(Duration::from_secs(600))
        .run();
    out.assert_ok();
    let labels = out.markers("bench");
    assert_eq!(labels.len(), 4, "four passvm runs");
    let maps: Vec<(u64, f64)> = out
        .vmm_lines()
        .filter_map(|l| {
            let rest = l.split_once("DMA-mapped ")?.1;
            let mib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            let ms: f64 = rest
                .rsplit_once(" in ")?
                .1
                .trim_end_matches(" ms")
                .parse()
                .ok()?;
            Some((mib, ms))
        })
        .collect();
    assert_eq!(maps.len(), 4, "one DMA map line per run");
    let parse = |v: Vec<&str>| -> Vec<u64> { v.iter().filter_map(|s| s.parse().ok()).collect() };
    let l1 = parse(out.markers("l1_read_ms"));
    let l2 = parse(out.l2_markers("read_ms"));
    assert_eq!(l2.len(), 12, "three reads per run");
    let l1_ms = median(l1).unwrap();
    eprintln!("pt-bench (QEMU TCG L0, nested KVM L1; one run, order of magnitude only)");
    eprintln!(
        "L1 reads the disk directly:      {READ_MIB} MiB in {l1_ms} ms (median of 3) = {:.1} MiB/s",
        mib_per_s(l1_ms)
    );
    for (i, label) in labels.iter().enumerate() {
        let (mib, ms) = maps[i];
        let read = median(l2[i * 3..i * 3 + 3].to_vec()).unwrap();
        eprintln!(
            "{label:<12} DMA map {mib} MiB in {ms:.0} ms = {:.2} s/GiB; L2 reads {READ_MIB} MiB in {read} ms = {:.1} MiB/s ({:.0}% of L1)",
            ms / 1000.0 * 1024.0 / mib as f64,
            mib_per_s(read),
            100.0 * mib_per_s(read) / mib_per_s(l1_ms)
        );
    }
}

/// `managed=on` and SIGTERM: passvm binds the disk (on virtio-pci in L1) to vfio-pci,
/// a SIGTERM while L2 runs ends it with 143 and the disk goes back to virtio-pci; a
/// second passvm binds it again, L2 uses it, and after L2's reboot it is back on
/// virtio-pci once more.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_passthrough -- --ignored"]
fn managed_device_survives_sigterm_and_goes_back_to_its_driver() {
    let out = pt_blk(
        L1Kernel::Own,
        &["d0"],
        "passvm.pt.managed=1 passvm.pt.sigterm=1",
    );
    assert_eq!(out.marker("sigterm_rc"), Some("143"), "SIGTERM's status");
    let before = out.markers("before");
    assert_eq!(before.len(), 1);
    assert!(before[0].ends_with(" virtio-pci"), "{before:?}");
    let after_sigterm = out.markers("after_sigterm");
    assert!(
        after_sigterm.len() == 1 && after_sigterm[0].ends_with(" virtio-pci"),
        "given back after SIGTERM: {after_sigterm:?}"
    );
    assert_disks_work_then(&out, &["d0"], 1, "virtio-pci");
    assert_msix(&out, 1, 1);
}
