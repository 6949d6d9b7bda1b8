//! The control API (issue 14, docs/api.md) seen from L1: `passvm remote` against a
//! passvm whose L2 waits for its power button (`resources/scenarios/api-control.sh`).
//! `vm.info` reports the passed-through disk with its host and guest addresses (the
//! guest address is where L2 finds the disk), bad requests get their JSON errors while
//! L2 runs on, `vm.power-button` makes L2 power off and passvm exit 0, and `vm.shutdown`
//! stops a second VM with exit status 0. The API thread runs under its own seccomp
//! filter (the default `--seccomp on`).

mod bed;

use bed::{Device, Outcome, Scenario};
use serde_json::Value;

/// A marker holding a JSON answer.
fn json(out: &Outcome, key: &str) -> Value {
    let text = out.marker(key).unwrap_or_else(|| panic!("no marker {key}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("marker {key} is not JSON ({e}): {text}"))
}

#[test]
#[ignore = "nested bed (QEMU TCG, minutes): cargo test --test nested_api -- --ignored"]
fn the_api_reports_the_vm_and_its_power_button_ends_it() {
    let out = Scenario::new("api-control").device(Device::blk("d0")).run();
    out.assert_ok();

    assert_eq!(out.marker("ping_rc"), Some("0"));
    let ping = json(&out, "api_ping");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"), "{ping}");
    assert!(ping["pid"].as_u64().is_some_and(|p| p > 1), "{ping}");

    assert_eq!(out.marker("info_rc"), Some("0"));
    let info = json(&out, "api_info");
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1, "{info}");
    assert_eq!(info["config"]["memory"]["size"], 256u64 << 20, "{info}");
    assert_eq!(info["config"]["seccomp"], "on", "{info}");
    let host_bdf = out.marker("host_bdf").expect("the disk's BDF in L1");
    let devices = info["devices"].as_array().expect("a device list");
    assert_eq!(devices.len(), 1, "{info}");
    let disk = &devices[0];
    assert_eq!(disk["id"], "disk0", "{info}");
    assert_eq!(disk["host"]["bdf"], host_bdf, "{info}");
    assert_eq!(disk["given_as"], host_bdf, "{info}");
    assert_eq!(disk["hotplugged"], false, "{info}");
    assert!(
        matches!(disk["backend"].as_str(), Some("iommufd" | "group")),
        "{info}"
    );
    let guest_bdf = disk["guest_bdf"].as_str().expect("a guest BDF");
    let l2_pci = out.l2_markers("l2_pci");
    assert!(
        l2_pci.contains(&format!("{guest_bdf} 1af4:1042").as_str()),
        "L2 finds the virtio-blk disk at {guest_bdf}: {l2_pci:?}"
    );

    // Bad requests: JSON errors with their statuses, and the VM runs on.
    assert_eq!(out.marker("bad_rc"), Some("1"), "an error answer");
    let bad = json(&out, "bad_out");
    assert_eq!(bad["error"], "no device with id \"nosuch\"", "{bad}");
    assert!(
        bad["hint"].as_str().is_some_and(|h| h.contains("vm.info")),
        "{bad}"
    );
    let bad_err = out.marker("bad_err").unwrap_or_default();
    assert!(bad_err.contains("(HTTP 404 Not Found)"), "{bad_err}");
    assert_eq!(out.marker("add_rc"), Some("1"));
    let add_err = out.marker("add_err").unwrap_or_default();
    assert!(
        add_err.contains("no hot-pluggable slot") && add_err.contains("HTTP 503"),
        "{add_err}"
    );
    assert_eq!(out.marker("addfd_rc"), Some("1"));
    let addfd_err = out.marker("addfd_err").unwrap_or_default();
    assert!(
        addfd_err.contains("no hot-pluggable slot"),
        "the descriptor came through and was parsed as the device: {addfd_err}"
    );
    assert_eq!(
        out.marker("alive"),
        Some("yes"),
        "bad requests never stop the VM"
    );
    assert_eq!(out.marker("ping2_rc"), Some("0"), "the API still answers");
    assert_eq!(
        out.marker("api_thread"),
        Some("api 2 1"),
        "the api thread runs under one filter, its own"
    );

    // The power button: L2 powers off, passvm exits 0 and removes its socket.
    assert_eq!(out.marker("button_rc"), Some("0"));
    assert!(
        out.vmm_lines()
            .any(|l| l.contains("API: pressed the guest's power button")),
        "passvm pressed it"
    );
    let irqs: u64 = out
        .l2_marker("ged_irqs")
        .and_then(|n| n.parse().ok())
        .expect("L2 saw the GED's interrupt");
    assert!(irqs >= 1);
    assert_eq!(out.marker("passvm_rc"), Some("0"), "passvm's exit status");
    assert_eq!(
        out.marker("passvm_reason"),
        Some("passvm: guest powered off"),
        "the guest's own power-off ended the VM"
    );
    assert_eq!(out.marker("sock_after"), Some("gone"));
    println!(
        "power-button to passvm's exit: {} ms",
        out.marker("button_ms").unwrap_or("?")
    );

    // vm.shutdown stops the VM at once, exit status 0.
    assert_eq!(out.marker("shutdown_rc"), Some("0"));
    assert_eq!(out.marker("shutdown_passvm_rc"), Some("0"));
    assert_eq!(
        out.marker("shutdown_reason"),
        Some("passvm: stopped through the API (vm.shutdown)")
    );
}
