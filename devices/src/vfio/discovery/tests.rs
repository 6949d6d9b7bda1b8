//! Resolution, backend choice, checks and binding against a fake host tree.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::backend_choice::{choose, BackendChoice};
use super::bind::{bind, unbind, BindOutcome, ManagedBinding, SysfsWriter};
use super::error::DiscoveryError;
use super::fake_tree::FakeHost;
use super::model::{Backend, DeviceKind, ProblemKind, ResolvedDevice};
use super::plan::Plan;
use super::resolve::resolve;
use super::sysfs::link_name;
use crate::vfio::memlock::HostLimits;
use crate::vfio::naming::parse_device_spec;

/// `--device` strings parsed the way the VMM's config step does, then planned.
fn plan_with_limits(
    specs: &[String],
    choice: BackendChoice,
    iommufd_fd: Option<i32>,
    guest_memory: u64,
    roots: &super::sysfs::Roots,
    limits: &HostLimits,
) -> Result<Plan, DiscoveryError> {
    let specs = specs
        .iter()
        .map(|s| parse_device_spec(s))
        .collect::<Result<Vec<_>, _>>()?;
    super::plan::plan_with_limits(&specs, choice, iommufd_fd, guest_memory, roots, limits)
}

const STORAGE: u32 = 0x010000;
const BRIDGE: u32 = 0x060400;
const UUID: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
/// The numbers of /dev/null: a node with them can be opened, which the node checks do.
const NULL: (u32, u32) = (1, 3);
const ZERO: (u32, u32) = (1, 5);

const UNLIMITED: HostLimits = HostLimits {
    memlock: None,
    ipc_lock: false,
};

fn res(h: &FakeHost, s: &str) -> Result<Vec<ResolvedDevice>, DiscoveryError> {
    resolve(&parse_device_spec(s)?, &h.roots)
}

fn one(h: &FakeHost, s: &str) -> ResolvedDevice {
    let mut v = res(h, s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(v.len(), 1, "{s}");
    v.remove(0)
}

fn err(h: &FakeHost, s: &str) -> String {
    match res(h, s) {
        Ok(v) => panic!(
            "{s} resolved to {:?}",
            v.iter().map(|d| &d.name).collect::<Vec<_>>()
        ),
        Err(e) => e.to_string(),
    }
}

/// A host with one virtio-blk on vfio-pci (group 0, cdev vfio0) and the iommufd bits.
fn cdev_host() -> (FakeHost, PathBuf) {
    let h = FakeHost::new();
    let dir = h.pci("0000:00:03.0", STORAGE, Some("vfio-pci"), Some(0));
    h.group_node(0);
    h.cdev(&dir, 0, NULL, Some(NULL));
    (h, dir)
}

#[test]
fn every_naming_form_reaches_the_same_device() {
    let (h, dir) = cdev_host();
    let canon = fs::canonicalize(&dir).unwrap();
    let link = h.roots.sys.parent().unwrap().join("mydisk");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    for s in [
        "/dev/vfio/devices/vfio0",
        "/dev/vfio/pci/0000:00:03.0",
        "/dev/vfio/pci/00:03.0",
        "/sys/bus/pci/devices/0000:00:03.0",
        "/sys/bus/pci/devices/0000:00:03.0/",
        "/sys/bus/pci/devices/0000:00:03.0//",
        "/sys/devices/pci0000:00/0000:00:03.0",
        "/sys/bus/pci/devices/../devices/0000:00:03.0",
        "/sys/class/vfio-dev/vfio0",
        "0000:00:03.0",
        "00:03.0",
        "/dev/vfio/0",
        "path=/dev/vfio/0,bdf=00:03.0",
        link.to_str().unwrap(),
    ] {
        let d = one(&h, s);
        assert_eq!(d.sysfs, canon, "{s}");
        assert_eq!(d.name, "0000:00:03.0", "{s}");
        assert_eq!(d.kind, DeviceKind::Pci);
        assert_eq!(d.vendor_device(), "1af4:1042");
        assert_eq!(d.class, Some(STORAGE));
        assert_eq!(d.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(d.group, Some(0));
        assert_eq!(
            d.cdev.as_ref().map(|c| c.name.as_str()),
            Some("vfio0"),
            "{s}"
        );
        let want_given = s.split(',').next().unwrap().trim_start_matches("path=");
        assert_eq!(d.given_as, want_given);
    }
}

#[test]
fn options_carry_through() {
    let (h, _) = cdev_host();
    let d = one(&h, "path=00:03.0,id=disk0,managed=on");
    assert_eq!(d.id.as_deref(), Some("disk0"));
    assert!(d.managed);
}

#[test]
fn stale_and_foreign_cdev_nodes_are_refused() {
    let h = FakeHost::new();
    let dir = h.pci("0000:00:03.0", STORAGE, Some("vfio-pci"), Some(0));
    // sysfs says 1:3, the node says 1:5: left from another device or boot.
    h.cdev(&dir, 0, NULL, Some(ZERO));
    let e = err(&h, "/dev/vfio/devices/vfio0");
    assert!(
        e.contains("1:5") && e.contains("1:3") && e.contains("stale"),
        "{e}"
    );
    // Resolving by address still works, and says why there is no usable cdev.
    let d = one(&h, "00:03.0");
    assert!(d.cdev.is_none());
    assert!(d.cdev_absent.unwrap().contains("stale"));

    // A node for which sysfs has no vfio-dev entry at all.
    crate::vfio::discovery::fake_tree::mknod_char(&h.roots.dev.join("vfio/devices/vfio7"), 1, 3);
    let e = err(&h, "/dev/vfio/devices/vfio7");
    assert!(e.contains("no /sys/class/vfio-dev entry"), "{e}");

    // Not a character device at all.
    fs::write(h.roots.dev.join("vfio/devices/vfio8"), "").unwrap();
    let e = err(&h, "/dev/vfio/devices/vfio8");
    assert!(e.contains("not a character device"), "{e}");
}

#[test]
fn missing_cdev_node_and_kernel_without_cdevs() {
    let h = FakeHost::new();
    let a = h.pci("0000:00:03.0", STORAGE, Some("vfio-pci"), Some(0));
    h.cdev(&a, 0, NULL, None);
    let e = err(&h, "/dev/vfio/devices/vfio0");
    assert!(e.contains("does not exist"), "{e}");
    let d = one(&h, "00:03.0");
    assert!(d.cdev_absent.unwrap().contains("devtmpfs"));

    let b = h.pci("0000:00:04.0", STORAGE, Some("vfio-pci"), Some(1));
    h.vfio_dev_without_cdev(&b, 1);
    let d = one(&h, "00:04.0");
    assert!(d.cdev.is_none());
    assert!(d.cdev_absent.unwrap().contains("CONFIG_VFIO_DEVICE_CDEV"));
}

#[test]
fn two_buses_with_the_same_name_do_not_collide() {
    let (h, dir) = cdev_host();
    let other = h.other_bus_device("platform", "0000:00:03.0");
    let d = one(&h, "/dev/vfio/pci/0000:00:03.0");
    assert_eq!(d.sysfs, fs::canonicalize(dir).unwrap());
    let e = err(&h, "/dev/vfio/platform/0000:00:03.0");
    assert!(e.contains("is a platform device"), "{e}");
    assert!(e.contains(other.file_name().unwrap().to_str().unwrap()));
    let e = err(&h, "/dev/vfio/usb/0000:00:03.0");
    assert!(e.contains("bus type \"usb\"") && e.contains("pci"), "{e}");
}

#[test]
fn groups_expand_skip_bridges_and_narrow() {
    let h = FakeHost::new();
    h.pci("0000:00:04.0", STORAGE, Some("vfio-pci"), Some(3));
    h.pci("0000:00:04.1", STORAGE, Some("virtio-pci"), Some(3));
    h.pci("0000:00:1c.0", BRIDGE, Some("pcieport"), Some(3));
    h.group_node(3);
    let all = res(&h, "/dev/vfio/3").unwrap();
    let names: Vec<_> = all.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["0000:00:04.0", "0000:00:04.1"]);
    assert_eq!(all[0].group_members.len(), 3);
    assert_eq!(one(&h, "/dev/vfio/3,bdf=00:04.1").name, "0000:00:04.1");
    // A root port's slot takes one function: a group needs bdf= there.
    let e = err(&h, "/dev/vfio/3,port=1");
    assert!(e.contains("holds 2 devices") && e.contains("bdf="), "{e}");
    assert_eq!(one(&h, "/dev/vfio/3,bdf=00:04.1,port=1").port, Some(1));
    let e = err(&h, "/dev/vfio/3,bdf=00:05.0");
    assert!(
        e.contains("not in IOMMU group 3") && e.contains("0000:00:04.1"),
        "{e}"
    );
    let e = err(&h, "/dev/vfio/9");
    assert!(
        e.contains("IOMMU group 9") && e.contains("does not exist"),
        "{e}"
    );
    assert_eq!(res(&h, "/sys/kernel/iommu_groups/3").unwrap().len(), 2);
}

#[test]
fn mdev_by_sysfs_and_bus_name() {
    let h = FakeHost::new();
    let parent = h.sys("devices/virtual/mtty/mtty");
    let dir = h.mdev(&parent, UUID, 5);
    h.group_node(5);
    for s in [
        format!("/sys/bus/mdev/devices/{UUID}"),
        format!("/sys/bus/mdev/devices/{UUID}/"),
        format!("/dev/vfio/mdev/{UUID}"),
        "/dev/vfio/5".to_string(),
    ] {
        let d = one(&h, &s);
        assert_eq!(d.kind, DeviceKind::Mdev, "{s}");
        assert_eq!(d.name, UUID);
        assert_eq!(d.sysfs, fs::canonicalize(&dir).unwrap());
        assert_eq!(d.parent.as_deref(), Some("mtty"));
        assert_eq!(d.mdev_type.as_deref(), Some("mtty-2"));
        assert_eq!(d.group, Some(5));
        assert!(d.vfio_bound, "an mdev driver is a VFIO driver");
        assert!(d.bdf.is_none());
    }
}

#[test]
fn nonexistent_and_garbage_names_explain_themselves() {
    let (h, _) = cdev_host();
    let cases = [
        ("00:09.0", "PCI device 0000:00:09.0 does not exist"),
        ("/sys/bus/pci/devices/0000:00:09.0", "does not exist"),
        ("/dev/vfio/devices/vfio3", "does not exist"),
        ("/dev/vfio/vfio", "container"),
        ("/sys/bus/pci", "not a device directory"),
        ("/sys/bus/pci/devices", "not a device directory"),
        ("/etc", "neither under /sys nor under /dev"),
        ("/nonexistent/x", "does not exist"),
        ("hello", "accepted forms"),
        ("00:03.0,colour=blue", "unknown option"),
    ];
    for (s, want) in cases {
        let e = err(&h, s);
        assert!(e.contains(want), "{s}: {e}");
    }
}

#[test]
fn odd_strings_never_panic_on_a_real_tree() {
    let (h, _) = cdev_host();
    let odd = [
        "/dev/vfio/pci/..",
        "/dev/vfio/../../etc/passwd",
        "/sys/../dev/vfio/0",
        "/sys/bus/pci/devices/0000:00:03.0/..",
        "/sys/bus/pci/devices/0000:00:03.0/vfio-dev",
        "/dev/vfio/devices/vfio0/..",
        "/dev/vfio/0/1",
        "/dev/vfio/pci/ff:1f.7",
        "/dev/vfio/mdev/..%2f",
        "/dev/vfio/4294967295",
        "/dev/vfio/4294967296",
        "./",
        "../",
        ".",
        "/",
        "fd=999999",
        "fd=0",
        "/dev/null",
        "/dev/vfio/devices/vfio99999999999999999999",
    ];
    for s in odd {
        let _ = res(&h, s);
        let _ = plan_with_limits(
            &[s.to_string()],
            BackendChoice::Auto,
            None,
            1 << 20,
            &h.roots,
            &UNLIMITED,
        );
    }
}

#[test]
fn fd_form_checks_the_descriptor() {
    let (h, dir) = cdev_host();
    // vfio0's numbers are /dev/null's, so an open /dev/null is "the cdev".
    let null = fs::File::open("/dev/null").unwrap();
    let d = one(&h, &format!("fd={}", null.as_raw_fd()));
    assert_eq!(d.sysfs, fs::canonicalize(&dir).unwrap());
    assert_eq!(d.fd, Some(null.as_raw_fd()));
    assert_eq!(d.given_as, format!("fd={}", null.as_raw_fd()));

    let zero = fs::File::open("/dev/zero").unwrap();
    h.char_link(ZERO, &h.sys("devices/virtual/mem/zero"));
    let e = err(&h, &format!("fd={}", zero.as_raw_fd()));
    assert!(e.contains("not a VFIO device cdev"), "{e}");

    let file = fs::File::open(h.roots.dev.join("iommu")).unwrap();
    let e = err(&h, &format!("fd={}", file.as_raw_fd()));
    assert!(e.contains("not a character device"), "{e}");

    let e = err(&h, "fd=987654");
    assert!(e.contains("not an open file descriptor"), "{e}");

    // Without --iommufd-fd passvm opens /dev/iommu itself; with it, it must be /dev/iommu.
    let spec = vec![format!("fd={}", null.as_raw_fd())];
    let p = plan_with_limits(&spec, BackendChoice::Auto, None, 0, &h.roots, &UNLIMITED).unwrap();
    assert_eq!(p.backend(), Backend::Iommufd);
    fs::remove_file(h.roots.dev.join("iommu")).unwrap();
    let e =
        plan_with_limits(&spec, BackendChoice::Auto, None, 0, &h.roots, &UNLIMITED).unwrap_err();
    assert!(e.to_string().contains("/dev/iommu"), "{e}");
    let e = plan_with_limits(
        &spec,
        BackendChoice::Auto,
        Some(zero.as_raw_fd()),
        0,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap_err();
    assert!(e.to_string().contains("is not /dev/iommu"), "{e}");
    let full = fs::File::open("/dev/full").unwrap();
    h.char_link((1, 7), &h.sys("devices/virtual/misc/iommu"));
    let p = plan_with_limits(
        &spec,
        BackendChoice::Auto,
        Some(full.as_raw_fd()),
        0,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap();
    assert_eq!(p.backend(), Backend::Iommufd);
    let e = plan_with_limits(
        &spec,
        BackendChoice::Group,
        Some(full.as_raw_fd()),
        0,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap_err();
    assert!(e.to_string().contains("only works with iommufd"), "{e}");
}

#[test]
fn backend_choice_prefers_iommufd_and_falls_back() {
    let (h, _) = cdev_host();
    let d = res(&h, "00:03.0").unwrap();
    let c = choose(&d, BackendChoice::Auto, &h.roots, None).unwrap();
    assert_eq!(c.backend, Backend::Iommufd);
    assert_eq!(
        choose(&d, BackendChoice::Group, &h.roots, None)
            .unwrap()
            .backend,
        Backend::Group
    );

    // A second device without a cdev: the whole VM falls back to groups.
    let b = h.pci("0000:00:04.0", STORAGE, Some("vfio-pci"), Some(1));
    h.group_node(1);
    let _ = b;
    let mut two = res(&h, "00:03.0").unwrap();
    two.extend(res(&h, "00:04.0").unwrap());
    let c = choose(&two, BackendChoice::Auto, &h.roots, None).unwrap();
    assert_eq!(c.backend, Backend::Group);
    assert!(c.why.contains("0000:00:04.0 has no VFIO cdev"), "{}", c.why);
    let e = choose(&two, BackendChoice::Iommufd, &h.roots, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("0000:00:04.0 has no VFIO cdev"), "{e}");

    // No /dev/iommu: groups, and asking for iommufd names the kernel options.
    h.without_iommufd();
    let c = choose(&d, BackendChoice::Auto, &h.roots, None).unwrap();
    assert_eq!(c.backend, Backend::Group);
    let e = choose(&d, BackendChoice::Iommufd, &h.roots, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CONFIG_IOMMUFD") && e.contains("CONFIG_VFIO_DEVICE_CDEV"),
        "{e}"
    );
    assert!("bogus".parse::<BackendChoice>().is_err());
}

#[test]
fn plan_lines_say_what_and_why() {
    let (h, _) = cdev_host();
    let p = plan_with_limits(
        &["/dev/vfio/devices/vfio0,id=d0".into()],
        BackendChoice::Auto,
        None,
        1 << 30,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap();
    let text = p.to_string();
    let first = text.lines().next().unwrap();
    for want in [
        "/dev/vfio/devices/vfio0 -> 0000:00:03.0",
        "1af4:1042 SCSI storage controller",
        "id=d0",
        "driver vfio-pci",
        "group 0 (/dev/vfio/0)",
        "cdev vfio0 (/dev/vfio/devices/vfio0)",
        "backend iommufd (/dev/iommu exists and every device has a cdev)",
    ] {
        assert!(first.contains(want), "missing {want:?} in {first}");
    }
    assert!(text.contains("interrupt remapping"), "{text}");
    assert!(text.contains("pinning 1 GiB"), "{text}");
}

#[test]
fn same_device_twice_is_refused() {
    let (h, _) = cdev_host();
    let e = plan_with_limits(
        &["00:03.0".into(), "/dev/vfio/devices/vfio0".into()],
        BackendChoice::Auto,
        None,
        0,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap_err();
    assert!(e.to_string().contains("named twice"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

fn problems(e: DiscoveryError) -> Vec<(String, ProblemKind, String)> {
    match e {
        DiscoveryError::NotAssignable { ref problems } => problems
            .iter()
            .map(|(d, p)| (d.clone(), p.kind, p.to_string()))
            .collect(),
        other => panic!("expected NotAssignable, got {other}"),
    }
}

#[test]
fn non_viable_group_names_the_culprit_and_exits_2() {
    let h = FakeHost::new();
    h.pci("0000:00:04.0", STORAGE, Some("vfio-pci"), Some(3));
    h.pci("0000:00:04.1", STORAGE, Some("virtio-pci"), Some(3));
    h.pci("0000:00:04.2", STORAGE, None, Some(3));
    h.pci("0000:00:1c.0", BRIDGE, Some("pcieport"), Some(3));
    h.group_node(3);
    let e = plan_with_limits(
        &["00:04.0".into()],
        BackendChoice::Auto,
        None,
        0,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    let msg = e.to_string();
    let ps = problems(e);
    assert_eq!(ps.len(), 1, "{msg}");
    assert_eq!(ps[0].1, ProblemKind::GroupNotViable);
    assert!(
        ps[0].2.contains("0000:00:04.1 (driver virtio-pci)"),
        "{msg}"
    );
    assert!(ps[0].2.contains("passvm bind 0000:00:04.1"), "{msg}");
    assert!(
        !ps[0].2.contains("04.2") && !ps[0].2.contains("1c.0"),
        "{msg}"
    );

    // Managing the other function makes the plan viable (it will be bound at start).
    let p = plan_with_limits(
        &["00:04.0".into(), "00:04.1,managed=on".into()],
        BackendChoice::Auto,
        None,
        0,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap();
    assert!(p.needs_binding());
    assert!(p
        .to_string()
        .contains("driver virtio-pci -> vfio-pci at start (managed)"));
}

#[test]
fn host_driver_no_iommu_and_memlock_are_reported_with_fixes() {
    let h = FakeHost::new();
    h.pci("0000:00:05.0", STORAGE, Some("virtio-pci"), Some(4));
    h.pci("0000:00:06.0", STORAGE, Some("e1000e"), None);
    fs::remove_dir(h.sys("class/iommu/virtio0")).unwrap();
    let low = HostLimits {
        memlock: Some(8 << 20),
        ipc_lock: false,
    };
    let e = plan_with_limits(
        &["00:05.0".into(), "00:06.0".into()],
        BackendChoice::Auto,
        None,
        512 << 20,
        &h.roots,
        &low,
    )
    .unwrap_err();
    let msg = e.to_string();
    let ps = problems(e);
    let kinds: Vec<_> = ps.iter().map(|p| (p.0.as_str(), p.1)).collect();
    assert!(
        kinds.contains(&("0000:00:05.0", ProblemKind::NotVfioDriver)),
        "{msg}"
    );
    assert!(
        kinds.contains(&("0000:00:06.0", ProblemKind::NoIommu)),
        "{msg}"
    );
    assert!(kinds.contains(&("vm", ProblemKind::Memlock)), "{msg}");
    assert!(msg.contains("bound to the host driver virtio-pci"), "{msg}");
    assert!(msg.contains("passvm bind 0000:00:05.0"), "{msg}");
    assert!(
        msg.contains("intel_iommu=on") && msg.contains("amd_iommu=on"),
        "{msg}"
    );
    assert!(msg.contains("virtio-iommu-pci"), "{msg}");
    assert!(msg.contains("ulimit -l"), "{msg}");
}

#[test]
fn missing_group_node_and_remapping_block_the_group_backend() {
    let h = FakeHost::new();
    h.without_iommufd();
    h.pci("0000:00:05.0", STORAGE, Some("vfio-pci"), Some(4));
    // No /dev/vfio/4, no remapping and the type1 opt-in off.
    let irq = h.sys("kernel/irq/24");
    fs::create_dir_all(&irq).unwrap();
    fs::write(irq.join("chip_name"), "PCI-MSIX-0000:00:05.0\n").unwrap();
    let params = h.sys("module/vfio_iommu_type1/parameters");
    fs::create_dir_all(&params).unwrap();
    fs::write(params.join("allow_unsafe_interrupts"), "N\n").unwrap();
    let e = plan_with_limits(
        &["00:05.0".into()],
        BackendChoice::Auto,
        None,
        0,
        &h.roots,
        &UNLIMITED,
    )
    .unwrap_err();
    let msg = e.to_string();
    let ps = problems(e);
    assert!(
        ps.iter()
            .any(|p| p.1 == ProblemKind::NodeMissing && p.2.contains("/dev/vfio/4")),
        "{msg}"
    );
    assert!(
        ps.iter().any(|p| p.1 == ProblemKind::InterruptRemapping
            && p.2.contains("vfio_iommu_type1.allow_unsafe_interrupts=1")),
        "{msg}"
    );
}

#[test]
fn node_errors_map_to_fixes() {
    let (h, _) = cdev_host();
    let node = h.roots.dev.join("vfio/0");
    let p = super::assignable::node_error_problem(
        &node,
        &std::io::Error::from_raw_os_error(libc::EACCES),
        &h.roots,
    );
    assert_eq!(p.kind, ProblemKind::NodePermission);
    assert!(p.to_string().contains("chown $USER /dev/vfio/0"), "{p}");
    let p = super::assignable::node_error_problem(
        &node,
        &std::io::Error::from_raw_os_error(libc::EBUSY),
        &h.roots,
    );
    assert_eq!(p.kind, ProblemKind::NodeBusy);
    assert!(p.to_string().contains("fuser"), "{p}");
}

#[test]
fn inventory_lists_and_judges() {
    let h = FakeHost::new();
    let a = h.pci("0000:00:03.0", STORAGE, Some("vfio-pci"), Some(0));
    h.group_node(0);
    h.cdev(&a, 0, NULL, Some(NULL));
    h.pci("0000:00:05.0", STORAGE, Some("virtio-pci"), Some(2));
    h.pci("0000:00:1c.0", BRIDGE, Some("pcieport"), Some(7));
    h.mdev(&h.sys("devices/virtual/mtty/mtty"), UUID, 9);
    h.group_node(9);
    let inv = super::inventory(&h.roots);
    let names: Vec<_> = inv.entries.iter().map(|e| e.device.name.as_str()).collect();
    assert_eq!(
        names,
        ["0000:00:03.0", "0000:00:05.0", "0000:00:1c.0", UUID]
    );
    assert!(inv.entries[0].problems.is_empty());
    assert_eq!(inv.entries[1].problems[0].kind, ProblemKind::NotVfioDriver);
    assert!(inv.entries[2].bridge);
    assert!(
        inv.entries[3].problems.is_empty(),
        "{:?}",
        inv.entries[3].problems
    );
}

/// Performs the kernel's side of the sysfs driver files on the fake tree.
struct FakeKernel {
    host_sys: PathBuf,
}

impl SysfsWriter for FakeKernel {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        fs::write(path, value)?;
        let bdf = value.trim();
        let dev = self.host_sys.join("bus/pci/devices").join(bdf);
        let set = |drv: Option<&str>| {
            let at = dev.join("driver");
            let _ = fs::remove_file(&at);
            if let Some(d) = drv {
                std::os::unix::fs::symlink(self.host_sys.join("bus/pci/drivers").join(d), &at)
                    .unwrap();
            }
        };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match name {
            "unbind" => set(None),
            "bind" => set(path
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())),
            "drivers_probe" => {
                let ov = fs::read_to_string(dev.join("driver_override")).unwrap_or_default();
                let ov = ov.trim();
                // Without an override the fake "native" driver is virtio-pci.
                set(Some(if ov.is_empty() || ov == "(null)" {
                    "virtio-pci"
                } else {
                    ov
                }));
            }
            _ => {}
        }
        Ok(())
    }
}

#[test]
fn bind_then_unbind_restores_the_original_driver() {
    let h = FakeHost::new();
    let dir = h.pci("0000:00:05.0", STORAGE, Some("e1000e"), Some(2));
    let k = FakeKernel {
        host_sys: h.roots.sys.clone(),
    };
    let bdf = "0000:00:05.0".parse().unwrap();
    let out = bind(&bdf, &h.roots, &k, false).unwrap();
    assert_eq!(
        out,
        BindOutcome::Bound {
            previous: Some("e1000e".into())
        }
    );
    assert_eq!(link_name(&dir.join("driver")).as_deref(), Some("vfio-pci"));
    assert_eq!(
        fs::read_to_string(dir.join("driver_override")).unwrap(),
        "vfio-pci"
    );
    let record = fs::read_to_string(h.roots.state.join("bind/0000:00:05.0")).unwrap();
    assert!(record.contains("driver=e1000e"), "{record}");
    // Binding again is a no-op.
    assert!(matches!(
        bind(&bdf, &h.roots, &k, false).unwrap(),
        BindOutcome::AlreadyBound { .. }
    ));

    let out = unbind(&bdf, &h.roots, &k).unwrap();
    assert_eq!(out.now.as_deref(), Some("e1000e"));
    assert!(out.had_record);
    assert_eq!(
        fs::read_to_string(dir.join("driver_override")).unwrap(),
        "\n"
    );
    assert!(!h.roots.state.join("bind/0000:00:05.0").exists());
}

#[test]
fn unbind_without_record_lets_the_kernel_choose() {
    let h = FakeHost::new();
    let dir = h.pci("0000:00:05.0", STORAGE, Some("vfio-pci"), Some(2));
    let k = FakeKernel {
        host_sys: h.roots.sys.clone(),
    };
    let out = unbind(&"00:05.0".parse().unwrap(), &h.roots, &k).unwrap();
    assert!(!out.had_record);
    assert_eq!(
        link_name(&dir.join("driver")).as_deref(),
        Some("virtio-pci")
    );
}

#[test]
fn bind_errors_are_explained() {
    let h = FakeHost::new();
    let k = FakeKernel {
        host_sys: h.roots.sys.clone(),
    };
    let e = bind(&"00:09.0".parse().unwrap(), &h.roots, &k, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    h.pci("0000:00:07.0", STORAGE, Some("e1000e"), None);
    let e = bind(&"00:07.0".parse().unwrap(), &h.roots, &k, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no IOMMU group") && e.contains("nothing was changed"),
        "{e}"
    );
    h.pci("0000:00:05.0", STORAGE, Some("e1000e"), Some(2));
    fs::remove_dir(h.sys("bus/pci/drivers/vfio-pci")).unwrap();
    let e = bind(&"00:05.0".parse().unwrap(), &h.roots, &k, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("modprobe vfio-pci"), "{e}");
}

#[test]
fn managed_binding_restores_on_drop() {
    let h = FakeHost::new();
    let dir = h.pci("0000:00:05.0", STORAGE, Some("e1000e"), Some(2));
    let k = FakeKernel {
        host_sys: h.roots.sys.clone(),
    };
    {
        let g =
            ManagedBinding::with_writer("00:05.0".parse().unwrap(), &h.roots, Box::new(k), false)
                .unwrap();
        assert_eq!(g.bdf().to_string(), "0000:00:05.0");
        assert_eq!(link_name(&dir.join("driver")).as_deref(), Some("vfio-pci"));
    }
    assert_eq!(link_name(&dir.join("driver")).as_deref(), Some("e1000e"));

    // A device that was already on vfio-pci stays there.
    let other = h.pci("0000:00:06.0", STORAGE, Some("vfio-pci"), Some(3));
    let k = FakeKernel {
        host_sys: h.roots.sys.clone(),
    };
    drop(
        ManagedBinding::with_writer("00:06.0".parse().unwrap(), &h.roots, Box::new(k), false)
            .unwrap(),
    );
    assert_eq!(
        link_name(&other.join("driver")).as_deref(),
        Some("vfio-pci")
    );
}

/// A kernel whose vfio-pci refuses the device: probing leaves it driverless.
struct RefusingKernel {
    inner: FakeKernel,
}

impl SysfsWriter for RefusingKernel {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        let dev = self
            .inner
            .host_sys
            .join("bus/pci/devices")
            .join(value.trim());
        let wants_vfio = fs::read_to_string(dev.join("driver_override"))
            .unwrap_or_default()
            .trim()
            == "vfio-pci";
        if path.ends_with("drivers_probe") && wants_vfio {
            return fs::write(path, value);
        }
        self.inner.write(path, value)
    }
}

#[test]
fn a_failed_bind_gives_the_device_back() {
    let h = FakeHost::new();
    let dir = h.pci("0000:00:05.0", STORAGE, Some("e1000e"), Some(2));
    let k = RefusingKernel {
        inner: FakeKernel {
            host_sys: h.roots.sys.clone(),
        },
    };
    let e = bind(&"00:05.0".parse().unwrap(), &h.roots, &k, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("given back to e1000e"), "{e}");
    assert_eq!(link_name(&dir.join("driver")).as_deref(), Some("e1000e"));
    assert!(!h.roots.state.join("bind/0000:00:05.0").exists());
}

fn put(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// The host's uses of a device, each named: a mounted partition, swap, a holder, an up
/// interface with routes or addresses, the boot VGA, a console; bind refuses them and
/// changes nothing, `force` binds anyway.
#[test]
fn bind_refuses_a_device_the_host_uses_unless_forced() {
    let h = FakeHost::new();
    let dir = h.pci("0000:00:05.0", STORAGE, Some("e1000e"), Some(2));
    let k = || FakeKernel {
        host_sys: h.roots.sys.clone(),
    };
    let bdf: crate::vfio::naming::Bdf = "00:05.0".parse().unwrap();
    let uses = || crate::vfio::discovery::host_use::host_uses(&dir, &h.roots);
    assert!(uses().is_empty(), "a device with nothing on it");
    // An nvme disk with two partitions: p1 mounted at /boot, p2 swap; the disk itself is
    // held by device-mapper.
    let disk = dir.join("nvme/nvme0/nvme0n1");
    put(&disk.join("dev"), "259:0\n");
    put(&disk.join("size"), "1000\n");
    for (p, dev) in [("nvme0n1p1", "259:1"), ("nvme0n1p2", "259:2")] {
        put(&disk.join(p).join("dev"), &format!("{dev}\n"));
        put(&disk.join(p).join("partition"), "1\n");
    }
    fs::create_dir_all(disk.join("holders/dm-0")).unwrap();
    put(
        &h.roots.proc.join("self/mountinfo"),
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n36 22 259:1 / /boot rw,relatime - ext4 /dev/nvme0n1p1 rw\n",
    );
    put(
        &h.roots.proc.join("swaps"),
        "Filename Type Size Used Priority\n/dev/nvme0n1p2 partition 8388604 0 -2\n",
    );
    // A NIC function's interface: up, with an IPv4 route; another up with only a
    // link-local IPv6 address (not a use); a third down.
    for (iface, flags) in [("eth0", "0x1003"), ("eth1", "0x1003"), ("eth2", "0x1002")] {
        put(
            &dir.join("net").join(iface).join("flags"),
            &format!("{flags}\n"),
        );
    }
    put(
        &h.roots.proc.join("net/route"),
        "Iface\tDestination\tGateway\tFlags\nsda0\t00000000\t0102A8C0\t0003\neth0\t0000A8C0\t00000000\t0001\n",
    );
    put(
        &h.roots.proc.join("net/if_inet6"),
        "fe800000000000000000000000000001 02 40 20 80 eth1\n",
    );
    put(&dir.join("boot_vga"), "1\n");
    fs::create_dir_all(dir.join("tty/ttyS4")).unwrap();
    put(&h.roots.proc.join("consoles"), "ttyS4 -W- (EC p a) 4:68\n");
    let got = uses();
    let want = [
        "boot VGA",
        "nvme0n1 is held by dm-0",
        "nvme0n1p1 is mounted at /boot",
        "nvme0n1p2 is in use as swap",
        "network interface eth0 is up with 1 IPv4 route(s) and 0 IPv6",
        "ttyS4 is a host console",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for w in want {
        assert!(got.iter().any(|u| u.contains(w)), "{w:?} not in {got:#?}");
    }
    assert!(!got.iter().any(|u| u.contains("eth1") || u.contains("eth2")));

    let e = bind(&bdf, &h.roots, &k(), false).unwrap_err();
    assert!(matches!(e, DiscoveryError::InUseByHost { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("the host is using it")
            && msg.contains("mounted at /boot")
            && msg.contains("nothing was changed")
            && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 2, "the user can fix it");
    assert_eq!(link_name(&dir.join("driver")).as_deref(), Some("e1000e"));
    assert!(
        ManagedBinding::with_writer(bdf, &h.roots, Box::new(k()), false).is_err(),
        "managed=on refuses it too"
    );
    assert_eq!(link_name(&dir.join("driver")).as_deref(), Some("e1000e"));
    assert_eq!(
        bind(&bdf, &h.roots, &k(), true).unwrap(),
        BindOutcome::Bound {
            previous: Some("e1000e".into())
        }
    );
}

// --- /dev/vfio/<bus>/<name> links (passvm's udev rule) -----------------------------

use super::links::{self, LinkState};

/// The rule as shipped (and as `passvm udev install` writes it).
const UDEV_RULE: &str = include_str!("../../../../resources/udev/70-passvm-vfio.rules");

#[test]
fn udev_link_name_for_each_bus() {
    let h = FakeHost::new();
    let pci = h.pci("0000:00:03.0", STORAGE, Some("vfio-pci"), Some(0));
    let mdev = h.mdev(&h.sys("devices/virtual/mtty/mtty"), UUID, 5);
    let platform = h.other_bus_device("platform", "fff51000.ethernet");
    let fsl = h.other_bus_device("fsl-mc", "dprc.1");
    for (dir, want) in [
        (&pci, "/dev/vfio/pci/0000:00:03.0".to_string()),
        (&mdev, format!("/dev/vfio/mdev/{UUID}")),
        (
            &platform,
            "/dev/vfio/platform/fff51000.ethernet".to_string(),
        ),
        (&fsl, "/dev/vfio/fsl-mc/dprc.1".to_string()),
    ] {
        let dir = fs::canonicalize(dir).unwrap();
        let (bus, name) = links::bus_and_name(&dir).unwrap();
        assert_eq!(links::link_path(&bus, &name).unwrap(), Path::new(&want));
    }
}

#[test]
fn names_that_need_care_get_no_link() {
    for (bus, name) in [
        ("platform", "a b"),
        ("platform", "tab\there"),
        ("platform", "new\nline"),
        ("platform", "x*y"),
        ("platform", "$(reboot)"),
        ("platform", "quote\"d"),
        ("platform", "back\\slash"),
        ("platform", "ünïcode"),
        ("platform", ".."),
        ("platform", ""),
        ("odd bus", "dev0"),
    ] {
        let why = links::unlinkable(bus, name).unwrap_or_else(|| panic!("{name:?} linked"));
        assert!(why.contains("sysfs path"), "{why}");
        assert!(links::link_path(bus, name).is_err());
    }
    for (bus, name) in [
        ("pci", "0000:00:03.0"),
        ("pci", "10000:ff:1f.7"),
        ("mdev", UUID),
        ("platform", "ff000000.dma-controller"),
        ("platform", "a+b=c@d#e_f-g"),
        ("fsl-mc", "dprc.1"),
    ] {
        assert_eq!(links::unlinkable(bus, name), None, "{name}");
    }
}

#[test]
fn the_rule_and_passvm_agree_on_which_names_get_a_link() {
    // The rule's shell pattern refuses any character outside its bracket (which also
    // holds the '/' joining bus and name); passvm's constant must be the same set.
    let start = UDEV_RULE
        .find("*[!A-Za-z0-9")
        .expect("the rule's character check")
        + 12;
    let end = start + UDEV_RULE[start..].find(']').unwrap();
    let mut rule: Vec<char> = UDEV_RULE[start..end]
        .chars()
        .filter(|c| *c != '/')
        .collect();
    let mut ours: Vec<char> = links::LINK_NAME_EXTRA_CHARS.chars().collect();
    rule.sort_unstable();
    ours.sort_unstable();
    assert_eq!(rule, ours);
    // Only cdevs, never the group nodes; nothing of passvm's at run time.
    assert!(UDEV_RULE.contains("SUBSYSTEM!=\"vfio-dev\", GOTO"));
    assert!(UDEV_RULE.contains("KERNEL!=\"vfio[0-9]*\", GOTO"));
    assert!(UDEV_RULE.contains("IMPORT{program}=\"/bin/sh -c '"));
    let code: Vec<&str> = UDEV_RULE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert!(code
        .iter()
        .all(|l| !l.contains("passvm ") || l.contains("echo passvm:")));
}

#[test]
fn a_link_to_the_device_s_own_cdev_is_followed() {
    let (h, dir) = cdev_host();
    h.bus_link("pci", "0000:00:03.0", "../devices/vfio0");
    let canon = fs::canonicalize(&dir).unwrap();
    for s in ["/dev/vfio/pci/0000:00:03.0", "/dev/vfio/pci/00:03.0"] {
        assert_eq!(one(&h, s).sysfs, canon, "{s}");
    }
    assert_eq!(
        links::check(&h.roots, "pci", "0000:00:03.0", Some(&canon)),
        LinkState::Valid {
            path: "/dev/vfio/pci/0000:00:03.0".into(),
            cdev: "vfio0".into()
        }
    );

    // An mdev's link, and a platform device's (which passvm checks, then refuses to
    // assign: it passes PCI devices and mdevs only).
    let m = h.mdev(&h.sys("devices/virtual/mtty/mtty"), UUID, 5);
    h.cdev(&m, 1, ZERO, Some(ZERO));
    h.bus_link("mdev", UUID, "../devices/vfio1");
    assert_eq!(
        one(&h, &format!("/dev/vfio/mdev/{UUID}")).sysfs,
        fs::canonicalize(&m).unwrap()
    );
    let p = h.other_bus_device("platform", "fff51000.ethernet");
    h.cdev(&p, 2, (1, 7), Some((1, 7)));
    h.bus_link("platform", "fff51000.ethernet", "../devices/vfio2");
    let p = fs::canonicalize(&p).unwrap();
    assert!(matches!(
        links::check(&h.roots, "platform", "fff51000.ethernet", Some(&p)),
        LinkState::Valid { .. }
    ));
    let e = err(&h, "/dev/vfio/platform/fff51000.ethernet");
    assert!(e.contains("is a platform device"), "{e}");

    // The listing shows each device's link.
    let inv = super::inventory::inventory(&h.roots);
    let link_of = |name: &str| {
        inv.entries
            .iter()
            .find(|e| e.device.name == name)
            .map(|e| e.link.clone())
            .unwrap()
    };
    assert!(matches!(link_of("0000:00:03.0"), LinkState::Valid { cdev, .. } if cdev == "vfio0"));
    assert!(matches!(link_of(UUID), LinkState::Valid { cdev, .. } if cdev == "vfio1"));
}

#[test]
fn a_link_to_another_device_s_cdev_is_refused() {
    let (h, _) = cdev_host();
    let b = h.pci("0000:00:04.0", STORAGE, Some("vfio-pci"), Some(1));
    h.cdev(&b, 1, ZERO, Some(ZERO));
    h.bus_link("pci", "0000:00:03.0", "../devices/vfio1");
    let e = err(&h, "/dev/vfio/pci/0000:00:03.0");
    assert!(
        e.starts_with("/dev/vfio/pci/0000:00:03.0: the link points to /dev/vfio/devices/vfio1")
            && e.contains("the cdev of pci device 0000:00:04.0, not of pci device 0000:00:03.0")
            && e.contains("passvm udev install")
            && e.contains("sudo rm /dev/vfio/pci/0000:00:03.0"),
        "{e}"
    );
    // The same device by any other name still resolves: only the link is refused.
    assert_eq!(one(&h, "0000:00:03.0").name, "0000:00:03.0");
    // And the listing says what is wrong with it.
    let inv = super::inventory::inventory(&h.roots);
    let bad = inv
        .entries
        .iter()
        .find(|e| e.device.name == "0000:00:03.0")
        .unwrap();
    assert!(matches!(&bad.link, LinkState::Bad { why, .. } if why.contains("0000:00:04.0")));
}

#[test]
fn dangling_stale_and_foreign_links_are_refused() {
    let (h, _) = cdev_host();
    // Dangling: the cdev it names is gone (the device was unbound while udev was away).
    h.bus_link("pci", "0000:00:03.0", "../devices/vfio9");
    let e = err(&h, "/dev/vfio/pci/0000:00:03.0");
    assert!(
        e.contains("points to ../devices/vfio9") && e.contains("dangling"),
        "{e}"
    );
    // The short PCI form finds the link at the full address, and says which link.
    let e = err(&h, "/dev/vfio/pci/00:03.0");
    assert!(
        e.starts_with("/dev/vfio/pci/00:03.0: the link /dev/vfio/pci/0000:00:03.0 points to"),
        "{e}"
    );

    // Left behind for a device that is gone from sysfs.
    h.bus_link("pci", "0000:00:09.0", "../devices/vfio0");
    let e = err(&h, "/dev/vfio/pci/0000:00:09.0");
    assert!(
        e.contains("no /sys/bus/pci/devices/0000:00:09.0") && e.contains("stale"),
        "{e}"
    );

    // To something that is not a VFIO cdev.
    fs::write(h.roots.dev.join("sda"), "").unwrap();
    h.bus_link("pci", "0000:00:03.0", "../../sda");
    let e = err(&h, "/dev/vfio/pci/0000:00:03.0");
    assert!(
        e.contains("points to /dev/sda, which is not a VFIO device cdev"),
        "{e}"
    );
    h.bus_link("pci", "0000:00:03.0", "../0");
    h.group_node(0);
    let e = err(&h, "/dev/vfio/pci/0000:00:03.0");
    assert!(
        e.contains("points to /dev/vfio/0, which is not a VFIO device cdev"),
        "{e}"
    );

    // A cdev name whose node is not the one sysfs registers.
    let b = h.pci("0000:00:04.0", STORAGE, Some("vfio-pci"), Some(1));
    h.cdev(&b, 1, ZERO, None);
    crate::vfio::discovery::fake_tree::mknod_char(&h.roots.dev.join("vfio/devices/vfio1"), 1, 3);
    h.bus_link("pci", "0000:00:04.0", "../devices/vfio1");
    let e = err(&h, "/dev/vfio/pci/0000:00:04.0");
    assert!(e.contains("a stale node"), "{e}");
    // A regular file where the link belongs.
    fs::remove_file(h.roots.dev.join("vfio/pci/0000:00:03.0")).unwrap();
    fs::write(h.roots.dev.join("vfio/pci/0000:00:03.0"), "").unwrap();
    let e = err(&h, "/dev/vfio/pci/0000:00:03.0");
    assert!(e.contains("is not a symlink"), "{e}");
    // Every refusal is a user error (exit 2) with the fix.
    let spec = parse_device_spec("/dev/vfio/pci/0000:00:03.0").unwrap();
    let e = resolve(&spec, &h.roots).unwrap_err();
    assert!(matches!(e, DiscoveryError::BadLink { .. }));
    assert_eq!(e.exit_code(), 2);
}

/// Runs the rule's own program (its `IMPORT{program}`, `$$` unescaped as udev does)
/// under /bin/sh for the cdev at `vfio_dev`, as udevd would with the event's DEVPATH.
fn rule_program_output(vfio_dev: &Path) -> (String, String) {
    let start = UDEV_RULE.find("IMPORT{program}=\"").unwrap() + "IMPORT{program}=\"".len();
    let end = start + UDEV_RULE[start..].find("'\"").unwrap();
    let cmd = &UDEV_RULE[start..end];
    let script = cmd
        .strip_prefix("/bin/sh -c '")
        .expect("the program is /bin/sh -c '...'")
        .replace("$$", "$");
    // The program reads /sys$DEVPATH; "/.." climbs from the host's /sys to the fake
    // tree, physically, which is how the program's `cd -P` resolves it.
    let devpath = format!("/..{}", fs::canonicalize(vfio_dev).unwrap().display());
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .env_clear()
        .env("DEVPATH", devpath)
        .output()
        .unwrap();
    assert!(out.status.success());
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_rule_s_program_names_every_bus_and_refuses_names_that_need_care() {
    if !Path::new("/sys").is_dir() || !Path::new("/bin/sh").exists() {
        eprintln!("skipped: needs /sys and /bin/sh");
        return;
    }
    let h = FakeHost::new();
    let pci = h.pci("0000:00:03.0", STORAGE, Some("vfio-pci"), Some(0));
    h.cdev(&pci, 0, NULL, None);
    let mdev = h.mdev(&h.sys("devices/virtual/mtty/mtty"), UUID, 5);
    h.cdev(&mdev, 1, ZERO, None);
    let plat = h.other_bus_device("platform", "fff51000.ethernet");
    h.cdev(&plat, 2, (1, 7), None);
    for (dir, n, want) in [
        (&pci, 0, "vfio/pci/0000:00:03.0".to_string()),
        (&mdev, 1, format!("vfio/mdev/{UUID}")),
        (&plat, 2, "vfio/platform/fff51000.ethernet".to_string()),
    ] {
        let (out, err) = rule_program_output(&dir.join(format!("vfio-dev/vfio{n}")));
        assert_eq!(out, format!("PASSVM_VFIO_LINK={want}\n"), "{err}");
        // passvm names the same link.
        let (bus, name) = links::bus_and_name(&fs::canonicalize(dir).unwrap()).unwrap();
        assert_eq!(
            links::link_path(&bus, &name).unwrap(),
            Path::new("/dev").join(want)
        );
    }
    for (i, odd) in ["a b", "x*y", "t\tab", "$(id)", "ünï"].iter().enumerate() {
        let n = 10 + i as u32;
        let dir = h.other_bus_device("platform", odd);
        h.cdev(&dir, n, (1, 20 + n), None);
        let (out, err) = rule_program_output(&dir.join(format!("vfio-dev/vfio{n}")));
        assert_eq!(out, "", "{odd:?} got a link");
        assert!(
            err.contains("characters udev would change"),
            "{odd:?}: {err}"
        );
        assert!(links::unlinkable("platform", odd).is_some());
    }
}
