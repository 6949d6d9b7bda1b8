//! Assignability checks: everything that would stop a device from being passed through,
//! each with the reason and the fix. `passvm devices` shows them; a VM start refuses
//! to go on while any is present.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use super::group::blockers;
use super::model::{Backend, DeviceKind, Problem, ProblemKind, ResolvedDevice};
use super::sysfs::{dir_names, Roots};

/// What a check knows beyond the device itself.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// Host roots.
    pub roots: &'a Roots,
    /// The VM's backend; `None` for a listing, which then checks whichever node exists.
    pub backend: Option<Backend>,
    /// Devices (sysfs names) that will be on vfio-pci when the VM opens them
    /// (`managed=on` devices of this VM).
    pub becoming_vfio: &'a [String],
    /// Whether to try opening the VFIO nodes.
    pub open_nodes: bool,
}

/// Every problem of one device.
pub fn device_problems(d: &ResolvedDevice, ctx: &CheckContext) -> Vec<Problem> {
    let mut out = Vec::new();
    let will_be_vfio = d.vfio_bound || ctx.becoming_vfio.contains(&d.name);
    if d.group.is_none() {
        out.push(no_iommu(ctx.roots));
    }
    // vfio-pci refuses a device without a group, so "bind it" would not help yet.
    if !will_be_vfio && d.group.is_some() {
        out.push(not_vfio(d));
    }
    if d.group.is_some() {
        let others: Vec<_> = blockers(&d.group_members, ctx.becoming_vfio)
            .into_iter()
            .filter(|m| m.name != d.name)
            .collect();
        if !others.is_empty() {
            let names: Vec<String> = others
                .iter()
                .map(|m| {
                    format!(
                        "{} (driver {})",
                        m.name,
                        m.driver.as_deref().unwrap_or("none")
                    )
                })
                .collect();
            let binds: Vec<String> = others
                .iter()
                .map(|m| format!("`passvm bind {}`", m.name))
                .collect();
            out.push(Problem {
                kind: ProblemKind::GroupNotViable,
                reason: format!(
                    "IOMMU group {} is not viable: it also holds {}, which the host still drives, and a group is assigned whole",
                    d.group.unwrap_or_default(),
                    names.join(", ")
                ),
                fix: format!(
                    "bind {} to vfio-pci too ({}), or unbind {} (no driver, pci-stub and pcieport are allowed)",
                    if others.len() == 1 { "it" } else { "them" },
                    binds.join(", "),
                    if others.len() == 1 { "it" } else { "them" }
                ),
            });
        }
    }
    if ctx.open_nodes && d.vfio_bound && d.fd.is_none() {
        let use_cdev = match ctx.backend {
            Some(Backend::Iommufd) => true,
            Some(Backend::Group) => false,
            None => d.cdev.is_some(),
        };
        let node = if use_cdev {
            d.cdev.as_ref().map(|c| c.node.clone())
        } else {
            d.group_node.clone()
        };
        if let Some(node) = node {
            if let Some(p) = node_problem(&node, ctx.roots) {
                out.push(p);
            }
        }
    }
    out
}

fn not_vfio(d: &ResolvedDevice) -> Problem {
    match d.kind {
        DeviceKind::Pci => Problem {
            kind: ProblemKind::NotVfioDriver,
            reason: match &d.driver {
                Some(drv) => format!("bound to the host driver {drv}, not to vfio-pci"),
                None => "bound to no driver, not to vfio-pci".into(),
            },
            fix: format!(
                "bind it with `passvm bind {}`, or add ,managed=on to --device to bind it for the VM's life",
                d.name
            ),
        },
        DeviceKind::Mdev => Problem {
            kind: ProblemKind::NotVfioDriver,
            reason: "no mdev driver is bound".into(),
            fix: "load the parent's mdev driver and recreate the mdev".into(),
        },
    }
}

fn no_iommu(roots: &Roots) -> Problem {
    let iommus = dir_names(&roots.sys_path("class/iommu"));
    let noiommu = super::sysfs::attr(
        &roots.sys_path("module/vfio/parameters"),
        "enable_unsafe_noiommu_mode",
    )
    .is_some_and(|v| v == "Y");
    let mut fix = if iommus.is_empty() {
        "turn the IOMMU on: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup and boot with \
         intel_iommu=on (Intel) or amd_iommu=on (AMD); inside a VM, give that VM a vIOMMU \
         (QEMU: -device virtio-iommu-pci or -device intel-iommu)"
            .to_string()
    } else {
        format!(
            "the host has IOMMUs ({}) but none covers this device; check the kernel log for DMAR/AMD-Vi/viommu errors, and do not boot with iommu=off",
            iommus.join(", ")
        )
    };
    if noiommu {
        fix.push_str(
            "; vfio's no-IOMMU mode is on, but passvm refuses it: it lets the guest DMA anywhere",
        );
    }
    Problem {
        kind: ProblemKind::NoIommu,
        reason: "no IOMMU group: no IOMMU isolates this device's DMA".into(),
        fix,
    }
}

/// Opens a VFIO node read-write (and closes it) and turns a failure into a problem.
pub fn node_problem(node: &Path, roots: &Roots) -> Option<Problem> {
    let result = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .map(drop);
    result.err().map(|e| node_error_problem(node, &e, roots))
}

/// The problem for a failed open of a VFIO node.
pub fn node_error_problem(node: &Path, e: &io::Error, roots: &Roots) -> Problem {
    let shown = roots
        .host_view(node)
        .unwrap_or_else(|| node.to_path_buf())
        .display()
        .to_string();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Problem {
            kind: ProblemKind::NodeMissing,
            reason: format!("{shown} does not exist"),
            fix: "mount devtmpfs on /dev (the kernel creates VFIO nodes there), or run udev".into(),
        },
        Some(libc::EACCES) | Some(libc::EPERM) => Problem {
            kind: ProblemKind::NodePermission,
            reason: format!("cannot open {shown} read-write ({e})"),
            fix: format!(
                "run passvm as root, or give your user the node: `chown $USER {shown}` (lasting: a udev rule \
                 SUBSYSTEM==\"vfio\", OWNER=\"<user>\"), and raise RLIMIT_MEMLOCK for that user"
            ),
        },
        Some(libc::EBUSY) => Problem {
            kind: ProblemKind::NodeBusy,
            reason: format!("{shown} is already open elsewhere (another VM?)"),
            fix: format!("stop the process that holds it: `fuser -v {shown}`"),
        },
        _ => Problem {
            kind: ProblemKind::NodeMissing,
            reason: format!("cannot open {shown}: {e}"),
            fix: "check the node and the kernel log".into(),
        },
    }
}
