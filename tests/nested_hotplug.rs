//! Hot-plug through the control API (issue 14): a disk added to a running L2 on a
//! PCIe root port is driven by L2's own drivers (pciehp, virtio-blk), removed, used by
//! L1's driver, and added again (`resources/scenarios/hotplug.sh`). What is asserted
//! is what L2, L1 and L0 see: the disk in L2 with the name L0 wrote, L2's line in L0's
//! image, L1's driver on the device between the rounds, and passvm's exit status.

mod bed;

use std::time::Duration;

use bed::{Device, L1Kernel, Scenario};

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_hotplug -- --ignored"]
fn a_disk_joins_a_running_guest_leaves_it_and_joins_again() {
    let out = Scenario::new("hotplug")
        .l1(L1Kernel::Own)
        .timeout(Duration::from_secs(480))
        .device(Device::blk("h0"))
        .run();
    out.assert_ok();
    assert_eq!(
        out.marker("add1_rc"),
        Some("0"),
        "{:?}",
        out.marker("add1_out")
    );
    let add1 = out.marker("add1_out").unwrap_or("");
    assert!(
        add1.contains("\"id\"") && add1.contains("hp0") && add1.contains("0000:01:00.0"),
        "the answer names the device and its guest BDF behind port 1: {add1}"
    );
    let disks = out.l2_markers("hp_disk");
    assert_eq!(disks.len(), 2, "{disks:?}");
    for (round, d) in disks.iter().enumerate() {
        let w: Vec<&str> = d.split_whitespace().collect();
        assert_eq!(w.len(), 4, "{d}");
        assert_eq!(w[0], (round + 1).to_string());
        assert_eq!(w[2], "h0", "L2 read the name L0 wrote: {d}");
        assert_eq!(w[3], "0000:01:00.0", "behind the first root port: {d}");
    }
    assert_eq!(out.marker("remove1_rc"), Some("0"));
    assert_eq!(out.l2_markers("hp_gone"), vec!["1"], "the disk left L2");
    let l1 = out.marker("l1_driver").unwrap_or("");
    assert!(
        l1.ends_with(" virtio-pci"),
        "released to the host, L1's own driver took it: {l1}"
    );
    assert_eq!(
        out.marker("add2_rc"),
        Some("0"),
        "{:?}",
        out.marker("add2_out")
    );
    assert_eq!(out.marker("passvm_rc"), Some("0"));
    assert!(out.l2_wrote("h0"), "L0's image holds L2's line");
}

/// The host takes a device back (issues 13 and 14): while L2 uses a hot-added disk, L1
/// unbinds vfio-pci from it; VFIO's request interrupt makes passvm unplug it from L2
/// through its slot, the host's unbind completes, and L2 keeps running.
#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_hotplug -- --ignored"]
fn the_host_unbinding_a_device_in_use_gets_it_back_and_the_guest_runs_on() {
    let out = Scenario::new("hotplug")
        .l1(L1Kernel::Own)
        .timeout(Duration::from_secs(480))
        .device(Device::blk("h0"))
        .l1_append("passvm.hp.unbind=1")
        .run();
    out.assert_ok();
    assert_eq!(out.marker("add2_rc"), Some("0"));
    assert_eq!(
        out.l2_markers("hp_gone"),
        vec!["1", "2"],
        "the disk left L2 after remove-device, then after the host's unbind"
    );
    let l1 = out.marker("l1_driver2").unwrap_or("?");
    assert_eq!(
        l1.split_whitespace().nth(1),
        None,
        "the host's unbind completed: no driver on the device: {l1}"
    );
    assert!(out.marker("unbind_ms").is_some());
    assert_eq!(out.l2_marker("hp_after"), Some("alive"), "L2 ran on");
    assert_eq!(out.marker("passvm_rc"), Some("0"));
}
