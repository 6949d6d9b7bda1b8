//! Device discovery in the nested bed (issue 4): every `--device` naming form on the
//! bed's kernel (iommufd) and on Debian's (groups only), `passvm devices`, a
//! non-viable group, `passvm bind`/`unbind`, and the udev rule's /dev/vfio/<bus>/<name>
//! links (issue 15). The scenarios live in `resources/scenarios/discovery-*.sh` and
//! `udev-links.sh`; assertions are on their markers.

mod bed;

use bed::{Device, L1Kernel, Outcome, Scenario};

/// One `plan` marker: "NAME|rc=N|LINE".
struct Planned<'a> {
    name: &'a str,
    rc: i32,
    line: &'a str,
}

fn plans(out: &Outcome) -> Vec<Planned<'_>> {
    out.markers("plan")
        .into_iter()
        .map(|m| {
            let mut it = m.splitn(3, '|');
            let name = it.next().unwrap_or("");
            let rc = it
                .next()
                .and_then(|r| r.strip_prefix("rc="))
                .and_then(|r| r.parse().ok())
                .unwrap_or(-1);
            Planned {
                name,
                rc,
                line: it.next().unwrap_or(""),
            }
        })
        .collect()
}

fn plan_of<'a>(out: &'a Outcome, name: &str) -> Planned<'a> {
    plans(out)
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no plan marker for {name:?}"))
}

/// Asserts that `name` planned (exit 0) to `bdf` with `backend`.
fn assert_resolves(out: &Outcome, name: &str, bdf: &str, backend: &str) {
    let p = plan_of(out, name);
    assert_eq!(p.rc, 0, "{name}: passvm --dry-run failed: {}", p.line);
    assert!(
        p.line.contains(&format!(" -> {bdf} ")),
        "{name} did not resolve to {bdf}: {}",
        p.line
    );
    assert!(
        p.line.contains(&format!("backend {backend} ")),
        "{name} did not get backend {backend}: {}",
        p.line
    );
}

fn assert_refused(out: &Outcome, name: &str, needle: &str) {
    let p = plan_of(out, name);
    assert_eq!(
        p.rc, 2,
        "{name} was not refused with exit code 2: {}",
        p.line
    );
    assert!(
        p.line.contains(needle),
        "{name}: refusal does not say {needle:?}: {}",
        p.line
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_discovery -- --ignored"]
fn every_name_of_a_cdev_device_resolves_to_iommufd() {
    let out = Scenario::new("discovery-cdev")
        .l1(L1Kernel::Own)
        .disk("d0")
        .run();
    out.assert_ok();
    let bdf = out.marker("bdf").expect("bdf marker");
    let cdev = out.marker("cdev").expect("cdev marker");
    let group = out.marker("group").expect("group marker");
    let short = bdf.trim_start_matches("0000:");
    for name in [
        cdev.to_string(),
        format!("/dev/vfio/pci/{bdf}"),
        format!("/sys/bus/pci/devices/{bdf}"),
        format!("/sys/bus/pci/devices/{bdf}/"),
        bdf.to_string(),
        short.to_string(),
        format!("/dev/vfio/{group}"),
    ] {
        assert_resolves(&out, &name, bdf, "iommufd");
    }
    let forced = plans(&out)
        .into_iter()
        .filter(|p| p.name == bdf)
        .nth(1)
        .expect("the --vfio-backend group run");
    assert_eq!(forced.rc, 0, "{}", forced.line);
    assert!(
        forced.line.contains("backend group (requested)"),
        "{}",
        forced.line
    );

    assert_refused(&out, "/dev/vfio/devices/vfio77", "stale");

    let uuid = out.marker("mdev").expect("mdev marker");
    for name in [
        format!("/sys/bus/mdev/devices/{uuid}"),
        format!("/dev/vfio/mdev/{uuid}"),
    ] {
        let p = plan_of(&out, &name);
        assert_eq!(p.rc, 0, "{name}: {}", p.line);
        assert!(
            p.line.contains(&format!(" -> {uuid} (mdev")),
            "{name}: {}",
            p.line
        );
    }

    assert_refused(&out, "/dev/vfio/vfio", "container");
    assert_refused(&out, "0000:00:1f.7", "does not exist");
    assert_refused(&out, "not-a-device", "not a path and not a PCI address");
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_discovery -- --ignored"]
fn without_iommufd_the_same_names_fall_back_to_groups() {
    let out = Scenario::new("discovery-legacy")
        .l1(L1Kernel::Debian)
        .disk("d0")
        .run();
    out.assert_ok();
    let bdf = out.marker("bdf").expect("bdf marker");
    let group = out.marker("group").expect("group marker");
    assert_eq!(
        out.marker("cdev"),
        Some(""),
        "Debian's kernel has no VFIO cdevs"
    );
    for name in [
        format!("/dev/vfio/pci/{bdf}"),
        format!("/sys/bus/pci/devices/{bdf}"),
        format!("/sys/bus/pci/devices/{bdf}/"),
        bdf.to_string(),
        bdf.trim_start_matches("0000:").to_string(),
        format!("/dev/vfio/{group}"),
    ] {
        assert_resolves(&out, &name, bdf, "group");
        assert!(
            plan_of(&out, &name).line.contains("/dev/iommu"),
            "the fallback reason names the missing /dev/iommu"
        );
    }
    let forced = plans(&out)
        .into_iter()
        .filter(|p| p.name == bdf)
        .nth(1)
        .expect("the --vfio-backend iommufd run");
    assert_eq!(forced.rc, 2, "{}", forced.line);
    assert!(
        forced
            .line
            .contains("--vfio-backend iommufd cannot be used")
            && forced.line.contains("CONFIG_IOMMUFD"),
        "{}",
        forced.line
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_discovery -- --ignored"]
fn devices_lists_the_bound_disk_as_assignable_and_the_other_with_the_fix() {
    let out = Scenario::new("discovery-list")
        .l1(L1Kernel::Own)
        .disk("d0")
        .disk("d1")
        .run();
    out.assert_ok();
    assert_eq!(out.marker("devices_rc"), Some("0"));
    assert_eq!(out.marker("driver_d1"), Some("virtio-pci"));
    let row0 = out.marker("row_d0").expect("row for d0");
    assert!(
        row0.contains("vfio-pci") && row0.ends_with(" yes"),
        "{row0}"
    );
    assert!(
        row0.contains("1af4:1042") && row0.contains("vfio0"),
        "{row0}"
    );
    // QEMU's modern virtio-blk: the MSI-X table in BAR1 (4 KiB), the virtio registers
    // in 64-bit BAR4 (16 KiB).
    assert!(row0.contains("1:4KiB 4:16KiB"), "BAR sizes: {row0}");
    let row1 = out.marker("row_d1").expect("row for d1");
    assert!(
        row1.contains("virtio-pci") && row1.ends_with(" no"),
        "{row1}"
    );
    let reason = out.marker("reason_d1").unwrap_or("");
    assert!(reason.contains("host driver virtio-pci"), "{reason}");
    let fix = out.marker("fix_d1").unwrap_or("");
    let b1 = row1.split_whitespace().next().unwrap_or("");
    assert!(fix.contains(&format!("passvm bind {b1}")), "{fix}");
    assert_eq!(out.marker("table_host_bridge"), Some("0"), "bridges hidden");
    assert_eq!(
        out.marker("all_host_bridge"),
        Some("1"),
        "--all shows the host bridge"
    );
    assert_eq!(out.marker("json_rc"), Some("0"));
    assert_eq!(out.marker("json_assignable_true"), Some("1"), "only d0");
    assert_eq!(out.marker("json_name_d0"), Some("1"));
    assert_ne!(out.marker("json_not_vfio"), Some("0"));
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_discovery -- --ignored"]
fn a_group_with_a_member_on_its_host_driver_is_refused_naming_it() {
    let out = Scenario::new("discovery-group")
        .l1(L1Kernel::Own)
        .device(Device::blk_multifunction("a", "b"))
        .run();
    out.assert_ok();
    let group = out.marker("group_a").expect("group_a");
    assert_eq!(
        out.marker("group_b"),
        Some(group),
        "both functions share a group"
    );
    assert_eq!(out.marker("driver_b"), Some("virtio-pci"));
    let first = plans(&out).into_iter().next().expect("first plan");
    assert_eq!(first.rc, 2, "{}", first.line);
    assert!(first.line.contains("not viable"), "{}", first.line);
    let start = out.marker("start").expect("start marker");
    assert!(
        start.starts_with("rc=2|"),
        "start was not refused with 2: {start}"
    );
    assert!(
        start.contains("(driver virtio-pci)") && start.contains("not viable"),
        "start's refusal does not name the other function: {start}"
    );
    // Both bound: the function plans, and the group names both.
    let bound = plans(&out).into_iter().nth(1).expect("second plan");
    assert_eq!(bound.rc, 0, "{}", bound.line);
    let group_plan = format!("/dev/vfio/{group}");
    assert_eq!(plan_of(&out, &group_plan).rc, 0);
    assert!(out
        .markers("plan_devices")
        .contains(&format!("{group_plan}|2").as_str()));
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_discovery -- --ignored"]
fn bind_then_unbind_restores_the_original_driver() {
    let out = Scenario::new("discovery-bind")
        .l1(L1Kernel::Own)
        .disk("d0")
        .run();
    out.assert_ok();
    assert_eq!(out.marker("driver_before"), Some("virtio-pci"));
    assert_eq!(out.marker("bind_rc"), Some("0"));
    assert_eq!(out.marker("driver_bound"), Some("vfio-pci"));
    assert!(
        out.marker("record")
            .unwrap_or("")
            .contains("driver=virtio-pci"),
        "{:?}",
        out.marker("record")
    );
    assert!(out
        .marker("cdev_after_bind")
        .unwrap_or("")
        .starts_with("/dev/vfio/devices/vfio"));
    assert!(out
        .marker("bind_again")
        .unwrap_or("")
        .contains("already bound to vfio-pci"));
    assert_eq!(out.marker("unbind_rc"), Some("0"));
    assert_eq!(out.marker("driver_after"), Some("virtio-pci"));
    assert_eq!(out.marker("record_after"), Some("gone"));
    assert_eq!(out.marker("override_after"), Some("(null)"));
    let block = out.marker("block_after").unwrap_or("");
    assert!(
        block.starts_with("vd"),
        "the disk is a block device in L1 again: {block:?}"
    );
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_discovery -- --ignored"]
fn udev_rule_makes_per_bus_links_that_any_program_and_passvm_use() {
    let out = Scenario::new("udev-links")
        .l1(L1Kernel::Own)
        .disk("d0")
        .run();
    out.assert_ok();
    assert_eq!(
        out.marker("udevd"),
        Some("up"),
        "a real systemd-udevd in L1"
    );
    assert_eq!(out.marker("install_rc"), Some("0"), "passvm udev install");
    assert_eq!(
        out.marker("link_unbound"),
        Some("none"),
        "no link while the disk is on virtio-pci"
    );
    let bdf = out
        .marker("bound")
        .and_then(|b| b.split_whitespace().next())
        .expect("bound marker");
    let link = format!("/dev/vfio/pci/{bdf}");
    let cdev = out.marker("cdev").expect("cdev marker");
    let vfio_n = cdev.rsplit('/').next().unwrap_or("");
    // The rule's link, relative as udev makes it, reaches the device's own cdev.
    assert_eq!(
        out.marker("link"),
        Some(format!("../devices/{vfio_n}").as_str())
    );
    assert_eq!(out.marker("link_cdev"), Some(cdev));
    assert_eq!(
        out.marker("group_node"),
        Some("char"),
        "the group node is left alone"
    );
    // A program that is not passvm opens the device by its link and asks VFIO about it.
    let open = out.marker("open").unwrap_or("");
    assert!(
        open.starts_with(&format!("vfio-open {link}: ok")) && open.contains("pci=yes"),
        "{open}"
    );
    assert_eq!(
        out.marker("devices_link"),
        Some(format!("link: {link} -> {vfio_n}").as_str()),
        "passvm devices shows the link"
    );
    assert_resolves(&out, &link, bdf, "iommufd");
    // The mdev's link, by its UUID.
    let mdev_link = out.marker("mdev_link").unwrap_or("");
    assert!(
        mdev_link.starts_with("../devices/vfio") && mdev_link != format!("../devices/{vfio_n}"),
        "{mdev_link}"
    );
    let mdev_plan = plans(&out)
        .into_iter()
        .find(|p| p.name.starts_with("/dev/vfio/mdev/"))
        .expect("a plan for the mdev's link");
    assert_eq!(mdev_plan.rc, 0, "{}", mdev_plan.line);
    assert!(
        mdev_plan.line.contains("(mdev mtty-2 on mtty)"),
        "{}",
        mdev_plan.line
    );
    // A link to another device's cdev is refused with the fix; reinstalling repairs it.
    let tampered = out.marker("tampered").unwrap_or("");
    assert!(
        tampered.starts_with("rc=2|")
            && tampered.contains("which is the cdev of mdev device")
            && tampered.contains(&format!("not of pci device {bdf}"))
            && tampered.contains("passvm udev install"),
        "{tampered}"
    );
    assert_eq!(
        out.marker("refreshed"),
        Some(format!("../devices/{vfio_n}").as_str())
    );
    assert_eq!(
        out.marker("install_line"),
        Some(format!("{vfio_n}: {link}").as_str()),
        "passvm udev install lists each cdev's link"
    );
    assert_eq!(out.marker("mdev_link_gone"), Some("none"));
    let dangling = out.marker("dangling").unwrap_or("");
    assert!(
        dangling.starts_with("rc=2|") && dangling.contains("dangling"),
        "{dangling}"
    );
    // L2 got the disk by its link and wrote to it with its own virtio driver.
    assert_eq!(out.marker("passvm_rc"), Some("0"));
    assert!(out.l2_wrote("d0"), "L2's write is in L0's disk image");
    // `passvm udev remove` removes the rule and the links it made; unbinding removes
    // the link of a device.
    assert_eq!(out.marker("removed_rc"), Some("0"));
    assert_eq!(out.marker("rule_left"), Some("no"));
    assert_eq!(out.marker("link_after_remove"), Some("none"));
    assert_eq!(
        out.marker("link_reinstalled"),
        Some(format!("../devices/{vfio_n}").as_str())
    );
    assert_eq!(out.marker("link_gone"), Some("none"));
}
