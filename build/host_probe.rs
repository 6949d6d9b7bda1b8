//! Build script of `passvm` and `devices`: tells their tests what this machine offers.
//!
//! - `passvm_no_kvm`: no usable `/dev/kvm`.
//! - `passvm_no_free_hugepages`: fewer than 32 MiB of free reserved huge pages.
//! - `passvm_no_iasl`: no `iasl` (acpica-tools) on the PATH to disassemble ACPI tables.
//!
//! Tests that need one carry `#[cfg_attr(passvm_no_kvm, ignore = "...")]` (or the
//! hugepage one), so on a machine without it the test runner counts them as ignored,
//! with the reason, instead of letting them pass without testing anything. Where the
//! probe saw the resource, a test that then cannot use it fails.

use std::fs::OpenOptions;

/// What `hugepages_back_guest_ram_when_reserved` maps.
const HUGEPAGE_TEST_BYTES: u64 = 32 << 20;

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(passvm_no_kvm)");
    println!("cargo::rustc-check-cfg=cfg(passvm_no_free_hugepages)");
    println!("cargo::rustc-check-cfg=cfg(passvm_no_iasl)");
    // Probe again when the device appears or goes (a module load, a new machine). The
    // hugepage reservation has no file whose change cargo could see: after reserving
    // pages, `touch build/host_probe.rs` to probe again.
    println!("cargo::rerun-if-changed=/dev/kvm");
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("cargo::rustc-cfg=passvm_no_kvm");
    }
    let free = meminfo("HugePages_Free:").unwrap_or(0);
    let page = meminfo("Hugepagesize:").unwrap_or(2048) << 10;
    if free * page < HUGEPAGE_TEST_BYTES {
        println!("cargo::rustc-cfg=passvm_no_free_hugepages");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|dir| dir.join("iasl").is_file()) {
        println!("cargo::rustc-cfg=passvm_no_iasl");
    }
}
