//! The VM core (issue 3).
//!
//! * Host-side tests (run by plain `cargo test`): mistakes a user can make end passvm with
//!   one line naming the fix and a non-zero status, before anything runs.
//! * Nested scenarios (`--ignored`; QEMU TCG, minutes each): passvm in L1 boots L2 from
//!   `vmlinux` (PVH) and `bzImage` (64-bit boot protocol) with 1 and 2 vCPUs, L2's
//!   `reboot -f` ends passvm with 0; an L2 kernel panic ends it with 4 and the reason.
//! * A benchmark (`--ignored`, prints figures): start to L2 init, start to exit, peak RSS.

mod bed;

use std::process::{Command, Output};

use bed::{Outcome, Scenario};

fn passvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_passvm"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run passvm")
}

/// passvm failed with `code` and said exactly one line, which contains every `needles`.
fn assert_one_line_error(out: &Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit status; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line, got: {err}");
    assert!(err.starts_with("passvm: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} missing from: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn a_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"this is not a kernel image").unwrap();
    f
}

#[test]
fn missing_kernel_file() {
    let out = passvm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_one_line_error(
        &out,
        2,
        &["--kernel /nonexistent/vmlinux", "check the path"],
    );
}

#[test]
fn no_kernel_at_all() {
    assert_one_line_error(&passvm(&[]), 2, &["--kernel PATH"]);
}

#[test]
fn bad_size_string() {
    let k = a_file();
    let out = passvm(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--memory",
        "size=12X",
    ]);
    assert_one_line_error(&out, 2, &["--memory 'size=12X'", "512M"]);
}

#[test]
fn bad_cpus() {
    let k = a_file();
    let out = passvm(&["--kernel", k.path().to_str().unwrap(), "--cpus", "boot=0"]);
    assert_one_line_error(&out, 2, &["--cpus 'boot=0'", "between 1 and"]);
}

/// Needs a /dev/kvm that opens (this machine's does, even though it cannot run Linux):
/// the kernel is checked after the VM is created, and must fail cleanly.
#[test]
fn unrecognised_kernel_format() {
    if std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let k = a_file();
    let out = passvm(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--memory",
        "size=64M",
        "--serial",
        "off",
    ]);
    assert_one_line_error(&out, 1, &["kernel"]);
}

#[test]
fn dry_run_prints_the_plan_without_kvm() {
    let k = a_file();
    let out = passvm(&[
        "--kernel",
        k.path().to_str().unwrap(),
        "--cpus",
        "2",
        "--memory",
        "1G",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("vcpus      2"), "{text}");
    assert!(text.contains("memory     1024 MiB"), "{text}");
}

// ---- nested scenarios -------------------------------------------------------------

fn boot(kernel: &str, cpus: u32) -> Outcome {
    Scenario::new("vm-boot")
        .l1_append(&format!("passvm.l2kernel={kernel} passvm.l2cpus={cpus}"))
        .run()
}

/// L2 ran its check, reported `cpus` CPUs, rebooted, and passvm said so and exited 0.
fn assert_booted(out: &Outcome, cpus: u32) {
    out.assert_ok();
    assert_eq!(
        out.marker("passvm_rc"),
        Some("0"),
        "passvm's exit status in L1"
    );
    assert_eq!(out.l2_rc(), Some(0), "L2's check finished");
    assert_eq!(
        out.l2_marker("nproc"),
        Some(cpus.to_string().as_str()),
        "CPUs L2 brought up"
    );
    let online = if cpus == 1 {
        "0".to_string()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(out.l2_marker("cpus_online"), Some(online.as_str()));
    let mem: u64 = out
        .l2_marker("mem_kib")
        .and_then(|m| m.parse().ok())
        .expect("mem_kib");
    assert!(
        (200_000..=262_144).contains(&mem),
        "L2 sees most of its 256 MiB: {mem} KiB"
    );
    assert_eq!(
        out.l2_marker("clockevent"),
        Some("lapic-deadline"),
        "L2 ticks with the TSC-deadline LAPIC timer passvm advertises"
    );
    assert!(
        out.vmm_lines()
            .any(|l| l == "passvm: guest requested reboot"),
        "passvm's one-line reason"
    );
    assert_acpi(out);
}

/// L2 found passvm's ACPI tables and took its CPUs from the MADT, not the MP table, and
/// did not probe for a keyboard controller the FADT says is absent.
fn assert_acpi(out: &Outcome) {
    let l2: Vec<&str> = out.l2_lines().collect();
    let has = |s: &str| l2.iter().any(|l| l.contains(s));
    assert!(has("ACPI: RSDP 0x00000000000E0000"), "L2 found the RSDP");
    for t in [
        "ACPI: XSDT",
        "ACPI: FACP",
        "ACPI: DSDT",
        "ACPI: APIC",
        "ACPI: MCFG",
    ] {
        assert!(has(t), "L2 lists {t}");
    }
    assert!(
        has("ACPI: Using ACPI (MADT) for SMP configuration information"),
        "CPUs from the MADT"
    );
    assert!(
        !has("Intel MultiProcessor Specification"),
        "the MP table is not what L2 used"
    );
    assert!(!has("ACPI BIOS Error"), "no firmware errors");
    assert!(!has("i8042: Probing ports directly"), "no i8042 probe");
    assert_eq!(
        out.l2_marker("acpi_tables"),
        Some("APIC DSDT FACP MCFG"),
        "the tables in L2's sysfs"
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn vmlinux_pvh_one_vcpu() {
    assert_booted(&boot("vmlinux", 1), 1);
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn vmlinux_pvh_two_vcpus() {
    assert_booted(&boot("vmlinux", 2), 2);
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn bzimage_one_vcpu() {
    assert_booted(&boot("bzImage", 1), 1);
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn bzimage_two_vcpus() {
    assert_booted(&boot("bzImage", 2), 2);
}

/// `poweroff -f` in L2 goes through ACPI S5 (the FADT's sleep control register) and
/// passvm exits 0 saying so, within the scenario's time.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn guest_poweroff_through_acpi_exits_0() {
    let out = Scenario::new("vm-boot")
        .l1_append("passvm.l2kernel=bzImage passvm.l2cpus=2 passvm.l2end=poweroff")
        .run();
    out.assert_ok();
    assert_eq!(out.marker("passvm_rc"), Some("0"), "passvm's exit status");
    assert_eq!(out.l2_rc(), Some(0));
    assert!(
        out.l2_lines().any(|l| l.contains("reboot: Power down")),
        "L2 powered down"
    );
    assert!(
        out.vmm_lines().any(|l| l == "passvm: guest powered off"),
        "passvm's one-line reason"
    );
    assert_acpi(&out);
}

/// SIGPWR presses L2's ACPI power button: the GED's interrupt reaches L2 (its count in
/// /proc/interrupts), L2 powers off as a userspace acting on the button would, and passvm
/// exits 0.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn sigpwr_presses_the_power_button_and_the_guest_powers_off() {
    let out = Scenario::new("vm-powerbtn").run();
    out.assert_ok();
    assert_eq!(
        out.l2_marker("powerbtn_device"),
        Some("Name=\"Power Button\""),
        "L2's ACPI button driver found PWRB"
    );
    let irqs: u64 = out
        .l2_marker("ged_irqs")
        .and_then(|n| n.parse().ok())
        .expect("L2 counted the GED's interrupts");
    assert!(irqs >= 1, "{irqs}");
    assert!(
        out.vmm_lines()
            .any(|l| l.contains("SIGPWR: pressed the guest's power button")),
        "passvm pressed it"
    );
    assert_eq!(out.marker("powerbtn_rc"), Some("0"), "passvm's exit status");
    assert_eq!(
        out.marker("powerbtn_reason"),
        Some("passvm: guest powered off"),
        "the VM ended by the guest's own power-off"
    );
}

/// With `reboot=acpi`, L2 resets through the FADT's reset register instead of the
/// i8042, and passvm ends the VM as for any reboot.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn guest_reboot_through_the_acpi_reset_register_exits_0() {
    let out = Scenario::new("vm-boot")
        .l1_append(
            "passvm.l2kernel=vmlinux passvm.l2cpus=1 passvm.l2args=reboot=acpi passvm.log=info",
        )
        .run();
    assert_booted(&out, 1);
    assert!(
        out.l2_lines().any(|l| l.contains("reboot=acpi")),
        "L2's command line asked for the ACPI reset"
    );
    assert!(
        out.vmm_lines()
            .any(|l| l.contains("the guest reset through the ACPI reset register")),
        "the reset came through the FADT's register, not the i8042"
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn guest_panic_is_a_nonzero_exit_with_the_reason() {
    let out = Scenario::new("vm-panic").run();
    out.assert_ok();
    assert!(
        out.l2_lines()
            .any(|l| l.contains("about to exit on purpose")),
        "L2's init ran"
    );
    assert_eq!(
        out.marker("passvm_rc"),
        Some("4"),
        "passvm's status for a guest panic"
    );
    assert!(
        out.vmm_lines()
            .any(|l| l.starts_with("passvm: guest kernel panicked: Attempted to kill init!")),
        "the reason names the panic"
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_vm -- --ignored"]
fn sigterm_stops_a_running_guest_with_143() {
    let out = Scenario::new("vm-signal").run();
    out.assert_ok();
    assert_eq!(out.marker("signal_rc"), Some("143"));
    assert_eq!(
        out.marker("signal_reason"),
        Some("passvm: stopped by SIGTERM")
    );
    let ms: u64 = out
        .marker("signal_ms")
        .and_then(|m| m.parse().ok())
        .expect("signal_ms");
    println!("SIGTERM to exit: {ms} ms");
}

#[test]
#[ignore = "benchmark in the nested bed; prints figures: cargo test --test nested_vm -- --ignored --nocapture bench"]
fn bench_boot_to_init() {
    // 2 kernels x 2 vCPU counts x 3 runs of a full L2 boot: well past the default deadline.
    let out = Scenario::new("vm-bench")
        .timeout(std::time::Duration::from_secs(1200))
        .run();
    out.assert_ok();
    let runs = out.markers("bench");
    assert!(!runs.is_empty(), "no benchmark runs reported");
    println!("passvm in L1, L2 with 256 MiB ('quiet'); times from L1's /proc/uptime:");
    for r in &runs {
        println!("  {r}");
    }
}

/// What the guest platform costs L2's boot: the same kernel with a user's plain command
/// line under ACPI and with `acpi=off` (the MP-table PC of before), side by side.
#[test]
#[ignore = "benchmark in the nested bed; prints figures: cargo test --test nested_vm -- --ignored --nocapture bench"]
fn bench_platform_boot() {
    let out = Scenario::new("vm-platform-bench")
        .timeout(std::time::Duration::from_secs(900))
        .run();
    out.assert_ok();
    let runs = out.markers("platform");
    assert!(!runs.is_empty(), "no benchmark runs reported");
    println!("passvm in L1, bzImage, 1 vCPU, 256 MiB, cmdline 'console=ttyS0 reboot=k panic=-1':");
    for r in &runs {
        println!("  {r}");
    }
    for mode in ["acpi", "acpi=off"] {
        let init: Vec<u64> = runs
            .iter()
            .filter(|r| r.split_whitespace().next() == Some(mode))
            .filter_map(|r| {
                r.split_whitespace()
                    .find_map(|w| w.strip_prefix("l2_init_ms="))
            })
            .filter_map(|v| v.parse().ok())
            .collect();
        if !init.is_empty() {
            let mut sorted = init.clone();
            sorted.sort_unstable();
            println!(
                "  {mode}: L2 at init after {} ms (median of {}; min {}, max {})",
                sorted[sorted.len() / 2],
                sorted.len(),
                sorted[0],
                sorted[sorted.len() - 1]
            );
        }
    }
}
