//! seccomp filters per thread (issue 13), seen from L1: while L2 runs, every thread of
//! passvm is in seccomp filter mode (2) under exactly one filter, its own (a vCPU thread
//! started after the VMM thread's filter would carry two), and SIGTERM still ends the VM
//! cleanly with the teardown under the filters (`resources/scenarios/vm-seccomp.sh`).
//! The passthrough scenarios (nested_passthrough, nested_devices) run with the default
//! `--seccomp on` too: a call a list misses ends passvm there with exit status 5.

mod bed;

use bed::{Outcome, Scenario};

/// The `thread` markers of passvm's own threads. KVM's workers in the process
/// (`kvm-nx-lpage-recovery`, started by the first `KVM_RUN`, so under the vCPU's filter)
/// are kernel threads that never make a system call of their own: left out.
fn passvm_threads(out: &Outcome) -> Vec<&str> {
    out.markers("thread")
        .into_iter()
        .filter(|t| !t.starts_with("kvm-"))
        .collect()
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_seccomp -- --ignored"]
fn every_passvm_thread_runs_under_its_own_filter() {
    let out = Scenario::new("vm-seccomp").run();
    out.assert_ok();
    let threads = passvm_threads(&out);
    let mut names: Vec<&str> = threads.iter().filter_map(|t| t.split(' ').next()).collect();
    names.sort_unstable();
    assert_eq!(names, ["passvm", "vcpu0", "vcpu1"], "{threads:?}");
    for t in &threads {
        assert!(t.ends_with(" 2 1"), "seccomp mode 2, one filter: {t}");
    }
    assert_eq!(out.marker("seccomp_rc"), Some("143"));
    assert_eq!(
        out.marker("seccomp_reason"),
        Some("passvm: stopped by SIGTERM")
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_seccomp -- --ignored"]
fn seccomp_off_leaves_the_threads_unfiltered() {
    let out = Scenario::new("vm-seccomp")
        .l1_append("passvm.seccomp=off")
        .run();
    out.assert_ok();
    let threads = passvm_threads(&out);
    assert_eq!(threads.len(), 3, "{threads:?}");
    for t in &threads {
        assert!(t.ends_with(" 0 0"), "no filter: {t}");
    }
    assert_eq!(out.marker("seccomp_rc"), Some("143"));
}
