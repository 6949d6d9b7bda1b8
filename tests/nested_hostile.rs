//! Issue 13: a hostile guest breaks only its own device. L2 abuses one passed-through
//! disk (the victim, behind a PCIe root port in L0 so that it has a power-management
//! capability) through its config space and BARs while a second disk (the bystander)
//! keeps working, then a second passvm run drives the victim again
//! (`resources/l2/checks/pt-hostile.sh` on `resources/scenarios/pt-blk.sh`).
//!
//! What is asserted is what L2 and L0 see: the bystander's reads and writes after every
//! step (and its lines in L0's image), the ECAM window unchanged, the victim's BAR
//! reading all-ones in D3hot, both passvm runs exiting 0, and the victim's line in L0's
//! image, written by the second run.

mod bed;

use std::time::Duration;

use bed::{Device, L1Kernel, Outcome, Scenario};

fn results(out: &Outcome) -> Vec<String> {
    out.l2_lines()
        .filter_map(|l| l.strip_prefix("PASSVM-L2-RESULT "))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_hostile -- --ignored"]
fn a_hostile_guest_breaks_only_its_own_device() {
    let out = Scenario::new("pt-blk")
        .l1(L1Kernel::Own)
        .timeout(Duration::from_secs(480))
        .device(Device::blk_root_port("v0"))
        .device(Device::blk("d1"))
        .l1_append("passvm.pt.check=pt-hostile passvm.pt.runs=2 passvm.pt.l2=passvm.victim=v0")
        .run();
    out.assert_ok();
    assert_eq!(
        out.markers("passvm_rc"),
        vec!["0", "0"],
        "both runs exit 0: the hostile guest did not end its VM"
    );
    let results = results(&out);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(
        results.iter().all(|r| r.contains("rc=0")),
        "L2's check passed in both runs: {results:?}"
    );
    // Every memory BAR went over the ECAM window, the IOAPIC, the LAPIC, RAM and the
    // bystander's BAR.
    let moved = out.l2_markers("moved");
    for target in ["0xf0000000", "0xfec00000", "0xfee00000", "0x100000"] {
        assert!(
            moved.iter().filter(|m| m.ends_with(target)).count() >= 2,
            "both of virtio's memory BARs moved to {target}: {moved:?}"
        );
    }
    assert!(moved.len() >= 10, "{moved:?}");
    for step in ["start", "moves", "d3hot", "msix", "garbage"] {
        assert!(
            out.l2_markers("bystander")
                .contains(&format!("{step} ok").as_str()),
            "the bystander worked after {step}: {:?}",
            out.l2_markers("bystander")
        );
    }
    for step in ["moves", "garbage"] {
        assert!(
            out.l2_markers("ecam")
                .contains(&format!("{step} same").as_str()),
            "the ECAM window still answers as before after {step}"
        );
    }
    let d3 = out.l2_marker("d3").unwrap_or("?");
    assert_eq!(
        d3, "20 0xFFFFFFFF",
        "20 D3hot cycles; the BAR reads all-ones in D3hot"
    );
    assert_ne!(
        out.l2_marker("msix"),
        Some("none"),
        "the MSI-X table was abused"
    );
    assert_eq!(out.l2_marker("garbage"), Some("300"));
    // L0's images: the bystander's last step line and its disk-check line (run 1), the
    // victim's disk-check line (run 2 only: run 1 never writes the victim).
    let step = b"PASSVM-HOSTILE step=garbage\n";
    assert_eq!(
        out.read_disk("d1", 6144 * 512, step.len()),
        step,
        "L0 sees the bystander's write after the last hostile step"
    );
    assert!(out.l2_wrote("d1"));
    assert!(
        out.l2_wrote("v0"),
        "the second run drove the victim again after passvm reset it"
    );
}
