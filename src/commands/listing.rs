//! `passvm devices [--all] [--json]`: every PCI and mediated device, and whether it can
//! be assigned (with the fix when not).

use devices::size::human;
use devices::vfio::discovery::class_names::class_name;
use devices::vfio::discovery::inventory::{BarSize, Entry, Inventory};
use devices::vfio::discovery::irq_remap::Remapping;
use devices::vfio::discovery::links::LinkState;
use devices::vfio::discovery::{inventory, DiscoveryError, Roots};

use super::json::Json;

/// Prints the listing.
pub fn run(all: bool, json: bool) -> Result<(), DiscoveryError> {
    let roots = Roots::host();
    let inv = inventory(&roots);
    if json {
        print!("{}", to_json(&inv, &roots, all).render());
    } else {
        print!("{}", table(&inv, &roots, all));
    }
    Ok(())
}

fn shown(e: &Entry, all: bool) -> bool {
    all || !e.bridge
}

fn class_text(e: &Entry) -> String {
    match (e.device.class, &e.device.parent) {
        (Some(c), _) => class_name(c).to_string(),
        (None, Some(p)) => format!(
            "mdev {} on {p}",
            e.device.mdev_type.as_deref().unwrap_or("?")
        ),
        (None, None) => "-".into(),
    }
}

fn group_text(e: &Entry) -> String {
    let Some(g) = e.device.group else {
        return "none".into();
    };
    let others: Vec<&str> = e
        .device
        .group_members
        .iter()
        .filter(|m| m.name != e.device.name)
        .map(|m| m.name.as_str())
        .collect();
    if others.is_empty() {
        g.to_string()
    } else {
        format!("{g} (+{})", others.join(", +"))
    }
}

/// "0:16MiB 1:8GiB 5:io128B rom:512KiB": each implemented BAR's index and size, so a user
/// sees what a guest's BAR windows must hold.
fn bars_text(bars: &[BarSize]) -> String {
    if bars.is_empty() {
        return "-".into();
    }
    let size = |s: u64| human(s).replace(" bytes", "B").replace(' ', "");
    bars.iter()
        .map(|b| match (b.index, b.io) {
            (6, _) => format!("rom:{}", size(b.size)),
            (i, true) => format!("{i}:io{}", size(b.size)),
            (i, false) => format!("{i}:{}", size(b.size)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The human table.
pub fn table(inv: &Inventory, roots: &Roots, all: bool) -> String {
    let header = [
        "DEVICE",
        "VENDOR:DEV",
        "CLASS",
        "DRIVER",
        "GROUP",
        "CDEV",
        "BARS",
        "ASSIGNABLE",
    ];
    let rows: Vec<(&Entry, [String; 8])> = inv
        .entries
        .iter()
        .filter(|e| shown(e, all))
        .map(|e| {
            let d = &e.device;
            (
                e,
                [
                    d.name.clone(),
                    d.vendor_device(),
                    class_text(e),
                    d.driver.clone().unwrap_or_else(|| "-".into()),
                    group_text(e),
                    d.cdev
                        .as_ref()
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| "-".into()),
                    bars_text(&e.bars),
                    if e.problems.is_empty() {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ],
            )
        })
        .collect();
    let mut width = header.map(str::len);
    for (_, r) in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_string));
    for (e, r) in &rows {
        out.push_str(&line(r));
        match &e.link {
            LinkState::Absent => {}
            LinkState::Valid { path, cdev } => {
                out.push_str(&format!("    link: {} -> {cdev}\n", path.display()));
            }
            LinkState::Bad { path, why } => out.push_str(&format!(
                "    - link {} {why}\n      fix: {}\n",
                path.display(),
                LinkState::fix(path)
            )),
        }
        for p in &e.problems {
            out.push_str(&format!("    - {}\n      fix: {}\n", p.reason, p.fix));
        }
    }
    let unlinked = rows
        .iter()
        .filter(|(e, _)| e.device.cdev.is_some() && e.link == LinkState::Absent)
        .count();
    if unlinked > 0 {
        out.push_str(&format!(
            "({unlinked} with a cdev but no /dev/vfio/<bus>/<name> link; `sudo passvm udev install` makes them)\n"
        ));
    }
    let hidden = inv.entries.iter().filter(|e| !shown(e, all)).count();
    if hidden > 0 {
        let noun = if hidden == 1 { "bridge" } else { "bridges" };
        out.push_str(&format!("({hidden} {noun} hidden; --all shows them)\n"));
    }
    out.push('\n');
    out.push_str(&format!(
        "iommufd: {}\n",
        if inv.iommufd {
            "/dev/iommu present (devices with a cdev use the iommufd backend)"
        } else {
            "no /dev/iommu (legacy container + groups)"
        }
    ));
    out.push_str(&format!("{}\n", inv.isolation.summary(None)));
    out.push_str(&format!(
        "memlock: {}\n",
        match (inv.limits.ipc_lock, inv.limits.memlock) {
            (true, _) => "CAP_IPC_LOCK: no limit on pinned guest memory".to_string(),
            (false, None) => "RLIMIT_MEMLOCK unlimited".to_string(),
            (false, Some(l)) => format!(
                "RLIMIT_MEMLOCK {}: a VM's guest memory must fit in it",
                human(l)
            ),
        }
    ));
    let _ = roots;
    out
}

/// The JSON document (field names documented in docs/devices.md).
pub fn to_json(inv: &Inventory, roots: &Roots, all: bool) -> Json {
    let show = |p: &std::path::Path| {
        roots
            .host_view(p)
            .unwrap_or_else(|| p.to_path_buf())
            .display()
            .to_string()
    };
    let devices = inv
        .entries
        .iter()
        .filter(|e| shown(e, all))
        .map(|e| {
            let d = &e.device;
            let others = d
                .group_members
                .iter()
                .filter(|m| m.name != d.name)
                .map(|m| {
                    Json::Obj(vec![
                        ("name", Json::Str(m.name.clone())),
                        ("driver", Json::opt_str(m.driver.clone())),
                    ])
                })
                .collect();
            let problems = e
                .problems
                .iter()
                .map(|p| {
                    Json::Obj(vec![
                        ("kind", Json::Str(p.kind.id().into())),
                        ("reason", Json::Str(p.reason.clone())),
                        ("fix", Json::Str(p.fix.clone())),
                    ])
                })
                .collect();
            Json::Obj(vec![
                ("name", Json::Str(d.name.clone())),
                ("kind", Json::Str(d.kind.to_string())),
                ("sysfs", Json::Str(show(&d.sysfs))),
                (
                    "vendor",
                    Json::opt_str(d.vendor.map(|v| format!("{v:04x}"))),
                ),
                (
                    "device",
                    Json::opt_str(d.device.map(|v| format!("{v:04x}"))),
                ),
                ("class", Json::opt_str(d.class.map(|c| format!("{c:06x}")))),
                ("class_name", Json::opt_str(d.class.map(class_name))),
                ("parent", Json::opt_str(d.parent.clone())),
                ("mdev_type", Json::opt_str(d.mdev_type.clone())),
                ("driver", Json::opt_str(d.driver.clone())),
                ("iommu_group", Json::opt_num(d.group.map(u64::from))),
                (
                    "group_node",
                    Json::opt_str(d.group_node.as_deref().map(show)),
                ),
                ("group_others", Json::Arr(others)),
                (
                    "cdev",
                    Json::opt_str(d.cdev.as_ref().map(|c| c.name.clone())),
                ),
                (
                    "cdev_node",
                    Json::opt_str(d.cdev.as_ref().map(|c| show(&c.node))),
                ),
                (
                    "link",
                    match &e.link {
                        LinkState::Valid { path, .. } => Json::Str(path.display().to_string()),
                        _ => Json::Null,
                    },
                ),
                (
                    "link_problem",
                    match &e.link {
                        LinkState::Bad { why, .. } => Json::Str(why.clone()),
                        _ => Json::Null,
                    },
                ),
                ("bridge", Json::Bool(e.bridge)),
                (
                    "bars",
                    Json::Arr(
                        e.bars
                            .iter()
                            .map(|b| {
                                Json::Obj(vec![
                                    ("index", Json::Num(u64::from(b.index))),
                                    ("size", Json::Num(b.size)),
                                    (
                                        "kind",
                                        Json::Str(
                                            match (b.index, b.io, b.mem64) {
                                                (6, _, _) => "rom",
                                                (_, true, _) => "io",
                                                (_, false, true) => "mem64",
                                                _ => "mem32",
                                            }
                                            .into(),
                                        ),
                                    ),
                                    ("prefetchable", Json::Bool(b.prefetchable)),
                                ])
                            })
                            .collect(),
                    ),
                ),
                ("assignable", Json::Bool(e.problems.is_empty())),
                ("problems", Json::Arr(problems)),
            ])
        })
        .collect();
    let remap = match inv.isolation.remapping {
        Remapping::Present => "present",
        Remapping::Absent => "absent",
        Remapping::Unknown => "unknown",
    };
    Json::Obj(vec![
        ("iommufd", Json::Bool(inv.iommufd)),
        ("interrupt_remapping", Json::Str(remap.into())),
        (
            "allow_unsafe_interrupts",
            Json::Obj(vec![
                (
                    "vfio_iommu_type1",
                    Json::opt_bool(inv.isolation.type1_unsafe_ok),
                ),
                ("iommufd", Json::opt_bool(inv.isolation.iommufd_unsafe_ok)),
            ]),
        ),
        ("memlock_limit", Json::opt_num(inv.limits.memlock)),
        ("cap_ipc_lock", Json::Bool(inv.limits.ipc_lock)),
        ("devices", Json::Arr(devices)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::vfio::discovery::group::GroupMember;
    use devices::vfio::discovery::irq_remap::InterruptIsolation;
    use devices::vfio::discovery::{DeviceKind, Problem, ProblemKind, ResolvedDevice};
    use devices::vfio::memlock::HostLimits;
    use std::path::PathBuf;

    fn dev(name: &str, driver: &str, class: u32, group: u32) -> ResolvedDevice {
        ResolvedDevice {
            given_as: name.into(),
            kind: DeviceKind::Pci,
            name: name.into(),
            bdf: name.parse().ok(),
            parent: None,
            mdev_type: None,
            sysfs: PathBuf::from("/sys/devices/pci0000:00").join(name),
            vendor: Some(0x1af4),
            device: Some(0x1042),
            class: Some(class),
            driver: Some(driver.into()),
            vfio_bound: driver == "vfio-pci",
            group: Some(group),
            group_members: vec![GroupMember {
                name: name.into(),
                sysfs: PathBuf::new(),
                bus: Some("pci".into()),
                driver: Some(driver.into()),
                class: Some(class),
                vfio_bound: driver == "vfio-pci",
            }],
            group_node: Some(PathBuf::from(format!("/dev/vfio/{group}"))),
            cdev: None,
            cdev_absent: Some("not bound to a VFIO driver".into()),
            fd: None,
            id: None,
            managed: false,
            managed_force: false,
            rom: Default::default(),
            addr: None,
            port: None,
        }
    }

    fn inventory() -> Inventory {
        let problem = Problem {
            kind: ProblemKind::NotVfioDriver,
            reason: "bound to the host driver virtio-pci, not to vfio-pci".into(),
            fix: "bind it with `passvm bind 0000:00:11.0`".into(),
        };
        Inventory {
            entries: vec![
                Entry {
                    device: dev("0000:00:10.0", "vfio-pci", 0x010000, 0),
                    problems: vec![],
                    bridge: false,
                    link: LinkState::Valid {
                        path: "/dev/vfio/pci/0000:00:10.0".into(),
                        cdev: "vfio0".into(),
                    },
                    bars: vec![
                        BarSize {
                            index: 0,
                            size: 16 << 20,
                            io: false,
                            mem64: false,
                            prefetchable: false,
                        },
                        BarSize {
                            index: 2,
                            size: 8 << 30,
                            io: false,
                            mem64: true,
                            prefetchable: true,
                        },
                        BarSize {
                            index: 5,
                            size: 128,
                            io: true,
                            mem64: false,
                            prefetchable: false,
                        },
                        BarSize {
                            index: 6,
                            size: 512 << 10,
                            io: false,
                            mem64: false,
                            prefetchable: false,
                        },
                    ],
                },
                Entry {
                    device: dev("0000:00:11.0", "virtio-pci", 0x010000, 1),
                    problems: vec![problem],
                    bridge: false,
                    bars: Vec::new(),
                    link: LinkState::Bad {
                        path: "/dev/vfio/pci/0000:00:11.0".into(),
                        why: "points to ../devices/vfio9, which does not exist".into(),
                    },
                },
                Entry {
                    device: dev("0000:00:00.0", "-", 0x060000, 2),
                    problems: vec![],
                    bridge: true,
                    bars: Vec::new(),
                    link: LinkState::Absent,
                },
            ],
            isolation: InterruptIsolation {
                remapping: Remapping::Absent,
                type1_unsafe_ok: Some(true),
                iommufd_unsafe_ok: None,
            },
            limits: HostLimits {
                memlock: Some(8 << 20),
                ipc_lock: false,
            },
            iommufd: true,
        }
    }

    #[test]
    fn table_marks_assignability_and_prints_fixes_under_the_row() {
        let t = table(&inventory(), &Roots::host(), false);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("DEVICE") && lines[0].ends_with("ASSIGNABLE"));
        assert!(lines[1].starts_with("0000:00:10.0") && lines[1].ends_with(" yes"));
        assert!(
            lines[1].contains("0:16MiB 2:8GiB 5:io128B rom:512KiB"),
            "{}",
            lines[1]
        );
        assert!(
            lines[3].contains("virtio-pci") && lines[3].contains(" -  "),
            "{}",
            lines[3]
        );
        assert_eq!(lines[2], "    link: /dev/vfio/pci/0000:00:10.0 -> vfio0");
        assert!(lines[3].starts_with("0000:00:11.0") && lines[3].ends_with(" no"));
        assert!(lines[4].contains("- link /dev/vfio/pci/0000:00:11.0 points to ../devices/vfio9"));
        assert!(lines[5].contains("fix: refresh the links with `sudo passvm udev install`"));
        assert!(lines[6].contains("- bound to the host driver virtio-pci"));
        assert!(lines[7].contains("fix: bind it with `passvm bind 0000:00:11.0`"));
        assert!(t.contains("(1 bridge hidden; --all shows them)"));
        assert!(!t.contains("Host bridge"));
        assert!(t.contains("RLIMIT_MEMLOCK 8 MiB"));
        let all = table(&inventory(), &Roots::host(), true);
        assert!(all.contains("Host bridge"));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let j = to_json(&inventory(), &Roots::host(), false).render();
        for field in [
            "\"iommufd\": true",
            "\"interrupt_remapping\": \"absent\"",
            "\"vfio_iommu_type1\": true",
            "\"iommufd\": null",
            "\"memlock_limit\": 8388608",
            "\"name\": \"0000:00:10.0\"",
            "\"class\": \"010000\"",
            "\"class_name\": \"SCSI storage controller\"",
            "\"group_node\": \"/dev/vfio/0\"",
            "\"assignable\": true",
            "\"size\": 8589934592",
            "\"kind\": \"mem64\"",
            "\"kind\": \"rom\"",
            "\"kind\": \"not-vfio-driver\"",
            "\"link\": \"/dev/vfio/pci/0000:00:10.0\"",
            "\"link_problem\": \"points to ../devices/vfio9, which does not exist\"",
        ] {
            assert!(j.contains(field), "missing {field} in\n{j}");
        }
        assert!(!j.contains("0000:00:00.0"), "bridges only with --all");
    }
}
