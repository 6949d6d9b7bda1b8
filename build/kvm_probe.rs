//! Build script of `passvm` and `devices`: tells their tests whether this machine
//! has a usable `/dev/kvm`. Tests that need it carry
//! `#[cfg_attr(passvm_no_kvm, ignore = "...")]`, so on a machine without KVM the
//! test runner counts them as ignored, with the reason, instead of letting them pass
//! without testing anything. Where the probe saw KVM, a test that then cannot open
//! it fails.

use std::fs::OpenOptions;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(passvm_no_kvm)");
    // Probe again when the device appears or goes (a module load, a new machine).
    println!("cargo::rerun-if-changed=/dev/kvm");
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("cargo::rustc-cfg=passvm_no_kvm");
    }
}
