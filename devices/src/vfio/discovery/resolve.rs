//! From a parsed `--device` to the host device(s) it names.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::DiscoveryError;
use super::group;
use super::links::{self, LinkState};
use super::model::{Cdev, DeviceKind, ResolvedDevice};
use super::sysfs::{
    attr, char_devnum, dir_names, file_name, link_name, parse_devnum, parse_hex, split_rdev, Roots,
};
use crate::vfio::naming::{parse_device_name, Bdf, DeviceName, DeviceSpec, RomChoice};

/// Resolves one `--device` to the devices it names (several for a whole group).
pub fn resolve(spec: &DeviceSpec, roots: &Roots) -> Result<Vec<ResolvedDevice>, DiscoveryError> {
    let given = spec.name_given.clone();
    let mut fd = None;
    let sysfs_dirs: Vec<PathBuf> = match &spec.name {
        DeviceName::Fd(n) => {
            fd = Some(*n);
            vec![sysfs_of_fd(*n, roots)?]
        }
        DeviceName::Group { id } => group_devices(&given, *id, spec.bdf, roots)?,
        other => vec![device_dir(&given, other, roots, 0)?],
    };
    if spec.port.is_some() && sysfs_dirs.len() > 1 {
        return Err(DiscoveryError::Unusable {
            given,
            why: format!(
                "the group holds {} devices and a root port's slot takes one; name one with bdf=, \
                 and give each of the others a --device of its own",
                sysfs_dirs.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(sysfs_dirs.len());
    for dir in sysfs_dirs {
        let mut d = describe(&given, dir, roots)?;
        d.fd = fd;
        d.id = spec.id.clone();
        d.managed = spec.managed;
        d.managed_force = spec.managed_force;
        d.rom = spec.rom.clone();
        d.addr = spec.addr;
        d.port = spec.port;
        out.push(d);
    }
    Ok(out)
}

fn not_found(given: &str, what: String, fix: &str) -> DiscoveryError {
    DiscoveryError::NotFound {
        given: given.to_string(),
        what,
        fix: fix.to_string(),
    }
}

const LIST_FIX: &str = "List the host's devices with `passvm devices`.";

/// The canonical sysfs directory of a single-device name.
fn device_dir(
    given: &str,
    name: &DeviceName,
    roots: &Roots,
    depth: u8,
) -> Result<PathBuf, DiscoveryError> {
    match name {
        DeviceName::Bdf(bdf) => {
            let p = roots.sys_path(format!("bus/pci/devices/{bdf}"));
            canonical(given, &p, roots, &format!("PCI device {bdf}"))
        }
        DeviceName::BusName { bus, name } => {
            let bus_dir = roots.sys_path(format!("bus/{bus}"));
            if !bus_dir.is_dir() {
                let known = dir_names(&roots.sys_path("bus")).join(", ");
                return Err(not_found(
                    given,
                    format!("bus type {bus:?} (/sys/bus/{bus})"),
                    &format!("Bus types on this host: {known}."),
                ));
            }
            let p = bus_dir.join("devices").join(name);
            let by_name = canonical(given, &p, roots, &format!("/sys/bus/{bus}/devices/{name}"));
            // A real link at /dev/vfio/<bus>/<name> (passvm's udev rule) is followed only
            // when it leads to this very device's cdev; without one, sysfs alone decides.
            match links::check(roots, bus, name, by_name.as_deref().ok()) {
                LinkState::Absent | LinkState::Valid { .. } => by_name,
                LinkState::Bad { path, why } => Err(DiscoveryError::BadLink {
                    given: given.to_string(),
                    link: path,
                    why,
                }),
            }
        }
        DeviceName::Cdev { name } => cdev_device_dir(given, name, roots),
        DeviceName::Sysfs { path } => {
            let p = roots.rebase(path).unwrap_or_else(|| path.clone());
            let dir = canonical(given, &p, roots, &path.display().to_string())?;
            sysfs_device_dir(given, dir, roots)
        }
        DeviceName::OtherPath { path } => {
            // Follow the path (symlinks, `..`) and classify where it lands, once.
            let input = roots.rebase(path).unwrap_or_else(|| path.clone());
            let real = fs::canonicalize(&input)
                .map_err(|_| not_found(given, path.display().to_string(), LIST_FIX))?;
            let host = roots
                .host_view(&real)
                .ok_or_else(|| DiscoveryError::Unusable {
                    given: given.to_string(),
                    why: format!(
                        "resolves to {}, which is neither under /sys nor under /dev",
                        real.display()
                    ),
                })?;
            let reparsed = host
                .to_str()
                .ok_or_else(|| DiscoveryError::Unusable {
                    given: given.to_string(),
                    why: "path is not valid UTF-8".into(),
                })
                .and_then(|s| parse_device_name(s).map_err(DiscoveryError::from))?;
            match reparsed {
                DeviceName::OtherPath { .. } | DeviceName::Fd(_) if depth > 0 => {
                    Err(DiscoveryError::Unusable {
                        given: given.to_string(),
                        why: format!("resolves to {}, which names no device", host.display()),
                    })
                }
                DeviceName::Group { .. } => Err(DiscoveryError::Unusable {
                    given: given.to_string(),
                    why: format!(
                        "resolves to the group node {}; name it directly to use the whole group",
                        host.display()
                    ),
                }),
                DeviceName::OtherPath { .. } => Err(DiscoveryError::Unusable {
                    given: given.to_string(),
                    why: format!("resolves to {}, which names no device", host.display()),
                }),
                other => device_dir(given, &other, roots, depth + 1),
            }
        }
        DeviceName::Group { .. } | DeviceName::Fd(_) => Err(DiscoveryError::Unusable {
            given: given.to_string(),
            why: "names more than one device or an fd here".into(),
        }),
    }
}

fn canonical(given: &str, p: &Path, roots: &Roots, what: &str) -> Result<PathBuf, DiscoveryError> {
    let dir = fs::canonicalize(p).map_err(|_| not_found(given, what.to_string(), LIST_FIX))?;
    let devices =
        fs::canonicalize(roots.sys_path("devices")).unwrap_or_else(|_| roots.sys_path("devices"));
    if !dir.starts_with(&devices) {
        return Err(DiscoveryError::Unusable {
            given: given.to_string(),
            why: format!(
                "{} is not a device directory (those live under /sys/devices)",
                roots.show_sys(&dir)
            ),
        });
    }
    Ok(dir)
}

/// A sysfs directory the user named: a device, or a device's `vfio-dev/vfioN`.
fn sysfs_device_dir(given: &str, dir: PathBuf, roots: &Roots) -> Result<PathBuf, DiscoveryError> {
    let parent = dir.parent().map(Path::to_path_buf);
    if let Some(p) = parent {
        if p.file_name().is_some_and(|n| n == "vfio-dev") {
            if let Some(dev) = p.parent() {
                return Ok(dev.to_path_buf());
            }
        }
    }
    if !dir.join("subsystem").exists() {
        return Err(DiscoveryError::Unusable {
            given: given.to_string(),
            why: format!(
                "{} is not a device directory (no subsystem link)",
                roots.show_sys(&dir)
            ),
        });
    }
    Ok(dir)
}

/// `/dev/vfio/devices/vfioN` → the device, checking the node against sysfs.
fn cdev_device_dir(given: &str, name: &str, roots: &Roots) -> Result<PathBuf, DiscoveryError> {
    let node = roots.dev_path(format!("vfio/devices/{name}"));
    let node_dev = match char_devnum(&node) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found(
                given,
                format!("/dev/vfio/devices/{name}"),
                "Existing cdevs: ls /dev/vfio/devices; a device has one only while it is bound to vfio-pci on a kernel with CONFIG_VFIO_DEVICE_CDEV.",
            ))
        }
        Err(e) => {
            return Err(DiscoveryError::Unusable {
                given: given.to_string(),
                why: format!("/dev/vfio/devices/{name}: {e}"),
            })
        }
    };
    let class_dir = roots.sys_path(format!("class/vfio-dev/{name}"));
    let sysfs_dev = attr(&class_dir, "dev").and_then(|s| parse_devnum(&s));
    let Some(sysfs_dev) = sysfs_dev else {
        return Err(DiscoveryError::StaleCdev {
            given: given.to_string(),
            name: name.to_string(),
            node_dev: format!("{}:{}", node_dev.0, node_dev.1),
            sysfs_dev: "nothing (no /sys/class/vfio-dev entry)".into(),
        });
    };
    if sysfs_dev != node_dev {
        return Err(DiscoveryError::StaleCdev {
            given: given.to_string(),
            name: name.to_string(),
            node_dev: format!("{}:{}", node_dev.0, node_dev.1),
            sysfs_dev: format!("{}:{}", sysfs_dev.0, sysfs_dev.1),
        });
    }
    fs::canonicalize(class_dir.join("device")).map_err(|_| DiscoveryError::Unusable {
        given: given.to_string(),
        why: format!("/sys/class/vfio-dev/{name}/device is missing; the device is going away"),
    })
}

/// The devices of group `id` that `/dev/vfio/N[,bdf=]` names.
fn group_devices(
    given: &str,
    id: u32,
    bdf: Option<Bdf>,
    roots: &Roots,
) -> Result<Vec<PathBuf>, DiscoveryError> {
    let members = group::members(roots, id).ok_or_else(|| {
        not_found(
            given,
            format!("IOMMU group {id} (/sys/kernel/iommu_groups/{id})"),
            LIST_FIX,
        )
    })?;
    if let Some(bdf) = bdf {
        let want = bdf.to_string();
        return match members.iter().find(|m| m.name == want) {
            Some(m) => Ok(vec![m.sysfs.clone()]),
            None => Err(DiscoveryError::Unusable {
                given: given.to_string(),
                why: format!(
                    "{want} is not in IOMMU group {id}; its members are {}",
                    members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        };
    }
    // Bridges stay with the host: they keep the group viable under pcieport or no
    // driver, and a guest has no use for them.
    let devices: Vec<PathBuf> = members
        .iter()
        .filter(|m| !m.is_bridge())
        .map(|m| m.sysfs.clone())
        .collect();
    if devices.is_empty() {
        return Err(DiscoveryError::Unusable {
            given: given.to_string(),
            why: format!("IOMMU group {id} holds only bridges; there is nothing to assign"),
        });
    }
    Ok(devices)
}

/// `fd=N`: the sysfs device behind an open VFIO cdev fd.
fn sysfs_of_fd(fd: i32, roots: &Roots) -> Result<PathBuf, DiscoveryError> {
    let bad = |why: String| DiscoveryError::BadFd { fd, why };
    let (maj, min) = fd_char_devnum(fd).map_err(bad)?;
    let link = roots.sys_path(format!("dev/char/{maj}:{min}"));
    let target = fs::canonicalize(&link).map_err(|_| {
        bad(format!(
            "character device {maj}:{min} is unknown to sysfs; pass an open /dev/vfio/devices/vfioN"
        ))
    })?;
    let parent = target.parent();
    match parent {
        Some(p) if p.file_name().is_some_and(|n| n == "vfio-dev") => p
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| bad("the cdev has no parent device".into())),
        _ => Err(bad(format!(
            "character device {maj}:{min} is {}, not a VFIO device cdev; pass an open /dev/vfio/devices/vfioN",
            roots.show_sys(&target)
        ))),
    }
}

/// Checks that `fd` is an open `/dev/iommu`.
pub fn check_iommufd_fd(fd: i32, roots: &Roots) -> Result<(), DiscoveryError> {
    let bad = |why: String| DiscoveryError::BadFd { fd, why };
    let (maj, min) = fd_char_devnum(fd).map_err(|e| bad(format!("--iommufd-fd: {e}")))?;
    let target = fs::canonicalize(roots.sys_path(format!("dev/char/{maj}:{min}"))).ok();
    match target.as_deref().and_then(file_name) {
        Some(n) if n == "iommu" => Ok(()),
        _ => Err(bad(format!(
            "--iommufd-fd: character device {maj}:{min} is not /dev/iommu"
        ))),
    }
}

/// The major:minor of the character device open as `fd`.
fn fd_char_devnum(fd: i32) -> Result<(u32, u32), String> {
    // SAFETY: all-zero bytes are a valid `libc::stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into `st`, a valid and exclusively borrowed buffer; an
    // fd that is not open yields EBADF and touches nothing.
    let rc = unsafe { libc::fstat(fd, &mut st) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "not an open file descriptor in passvm ({e}); the launcher must pass it without close-on-exec"
        ));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err("not a character device; pass an open /dev/vfio/devices/vfioN".into());
    }
    Ok(split_rdev(st.st_rdev))
}

/// Reads everything about the device at a canonical sysfs directory.
pub(crate) fn describe(
    given: &str,
    sysfs: PathBuf,
    roots: &Roots,
) -> Result<ResolvedDevice, DiscoveryError> {
    let bus = link_name(&sysfs.join("subsystem"));
    let kind = match bus.as_deref() {
        Some("pci") => DeviceKind::Pci,
        Some("mdev") => DeviceKind::Mdev,
        Some(other) => {
            return Err(DiscoveryError::Unusable {
                given: given.to_string(),
                why: format!(
                    "{} is a {other} device; passvm assigns PCI devices and mediated devices only",
                    roots.show_sys(&sysfs)
                ),
            })
        }
        None => {
            return Err(DiscoveryError::Unusable {
                given: given.to_string(),
                why: format!("{} has no bus (no subsystem link)", roots.show_sys(&sysfs)),
            })
        }
    };
    let me = group::member_at(sysfs.clone());
    let name = me.name.clone();
    let bdf = match kind {
        DeviceKind::Pci => name.parse::<Bdf>().ok(),
        DeviceKind::Mdev => None,
    };
    let (parent, mdev_type) = match kind {
        DeviceKind::Mdev => (
            sysfs.parent().and_then(file_name),
            link_name(&sysfs.join("mdev_type")),
        ),
        DeviceKind::Pci => (None, None),
    };
    let group = link_name(&sysfs.join("iommu_group")).and_then(|g| g.parse::<u32>().ok());
    let group_members = group
        .and_then(|g| group::members(roots, g))
        .unwrap_or_default();
    let (cdev, cdev_absent) = find_cdev(&sysfs, me.vfio_bound, roots);
    let hex16 = |a| {
        attr(&sysfs, a)
            .as_deref()
            .and_then(parse_hex)
            .and_then(|v| u16::try_from(v).ok())
    };
    Ok(ResolvedDevice {
        given_as: given.to_string(),
        kind,
        name,
        bdf,
        parent,
        mdev_type,
        vendor: hex16("vendor"),
        device: hex16("device"),
        class: me.class,
        driver: me.driver,
        vfio_bound: me.vfio_bound,
        group,
        group_members,
        group_node: group.map(|g| roots.dev_path(format!("vfio/{g}"))),
        cdev,
        cdev_absent,
        fd: None,
        id: None,
        managed: false,
        managed_force: false,
        rom: RomChoice::Device,
        addr: None,
        port: None,
        sysfs,
    })
}

/// The device's cdev, verified; or why it has none.
pub fn find_cdev(sysfs: &Path, vfio_bound: bool, roots: &Roots) -> (Option<Cdev>, Option<String>) {
    let names = dir_names(&sysfs.join("vfio-dev"));
    let name = match names.as_slice() {
        [] if vfio_bound => {
            return (
                None,
                Some("the kernel registers no vfio-dev entry for it (Linux < 6.1)".into()),
            )
        }
        [] => return (None, Some("not bound to a VFIO driver".into())),
        [one] => one.clone(),
        _ => {
            return (
                None,
                Some(format!("several vfio-dev entries ({})", names.join(", "))),
            )
        }
    };
    let Some(devnum) =
        attr(&sysfs.join("vfio-dev").join(&name), "dev").and_then(|s| parse_devnum(&s))
    else {
        return (
            None,
            Some("the kernel has no VFIO device cdevs (needs CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV)".into()),
        );
    };
    let node = roots.dev_path(format!("vfio/devices/{name}"));
    match char_devnum(&node) {
        Ok(d) if d == devnum => (Some(Cdev { name, node, devnum }), None),
        Ok(d) => (
            None,
            Some(format!(
                "/dev/vfio/devices/{name} is {}:{} but sysfs says {}:{} (stale node)",
                d.0, d.1, devnum.0, devnum.1
            )),
        ),
        Err(_) => (
            None,
            Some(format!(
                "/dev/vfio/devices/{name} is missing (is devtmpfs mounted on /dev?)"
            )),
        ),
    }
}
