//! The plan for a VM's devices: what each `--device` resolved to, the backend and why,
//! and the host-wide notes (memory pinning, interrupt remapping).

use std::fmt;

use super::assignable::{device_problems, node_problem, CheckContext};
use super::backend_choice::{choose, BackendChoice, BackendDecision};
use super::bind::ManagedBinding;
use super::class_names::class_name;
use super::error::DiscoveryError;
use super::irq_remap;
use super::model::{Backend, Problem, ProblemKind, ResolvedDevice};
use super::resolve::{check_iommufd_fd, resolve};
use super::sysfs::Roots;
use crate::size::human;
use crate::vfio::memlock::HostLimits;
use crate::vfio::naming::DeviceSpec;

/// The devices of one VM, resolved and checked, and the backend they will use.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every device, in `--device` order (a group expands in place).
    pub devices: Vec<ResolvedDevice>,
    /// The backend and why.
    pub backend: BackendDecision,
    /// Host-wide facts worth printing (remapping, memlock).
    pub notes: Vec<String>,
    /// `--iommufd-fd`.
    pub iommufd_fd: Option<i32>,
    /// The roots this plan was made against.
    pub roots: Roots,
    specs: Vec<DeviceSpec>,
    choice: BackendChoice,
    guest_memory: u64,
}

/// Plans with the running process's memory limits. See [`plan_with_limits`].
pub fn plan(
    specs: &[DeviceSpec],
    backend: BackendChoice,
    iommufd_fd: Option<i32>,
    guest_memory: u64,
    roots: &Roots,
) -> Result<Plan, DiscoveryError> {
    plan_with_limits(
        specs,
        backend,
        iommufd_fd,
        guest_memory,
        roots,
        &HostLimits::current(),
    )
}

/// Resolves every `--device`, picks the backend and runs every assignability check.
/// Any failing check gives [`DiscoveryError::NotAssignable`] naming every problem.
pub fn plan_with_limits(
    specs: &[DeviceSpec],
    choice: BackendChoice,
    iommufd_fd: Option<i32>,
    guest_memory: u64,
    roots: &Roots,
    limits: &HostLimits,
) -> Result<Plan, DiscoveryError> {
    let mut devices: Vec<ResolvedDevice> = Vec::new();
    for spec in specs {
        for d in resolve(spec, roots)? {
            if let Some(prev) = devices.iter().find(|p| p.sysfs == d.sysfs) {
                return Err(DiscoveryError::Duplicate {
                    device: d.name.clone(),
                    first: prev.given_as.clone(),
                    second: d.given_as.clone(),
                });
            }
            devices.push(d);
        }
    }
    // A cdev descriptor binds to any iommufd: the launcher's (--iommufd-fd) when it
    // gave one, else the one passvm opens on /dev/iommu (checked below with the other
    // nodes), as for a hot-added descriptor in a VM whose IOAS already exists.
    if let Some(fd) = iommufd_fd {
        check_iommufd_fd(fd, roots)?;
    }
    // Device problems first: a device on a host driver also lacks a cdev, and "bind it"
    // is the message that helps, not "iommufd cannot be used".
    let becoming_vfio: Vec<String> = devices
        .iter()
        .filter(|d| d.managed)
        .map(|d| d.name.clone())
        .collect();
    let mut ctx = CheckContext {
        roots,
        backend: None,
        becoming_vfio: &becoming_vfio,
        open_nodes: false,
    };
    let mut problems: Vec<(String, Problem)> = Vec::new();
    for d in &devices {
        for p in device_problems(d, &ctx) {
            problems.push((d.name.clone(), p));
        }
    }
    if let Err(short) = limits.check(guest_memory) {
        problems.push((
            "vm".into(),
            Problem {
                kind: ProblemKind::Memlock,
                reason: short.reason(),
                fix: short.fix(),
            },
        ));
    }
    if !problems.is_empty() {
        return Err(DiscoveryError::NotAssignable { problems });
    }

    let backend = choose(&devices, choice, roots, iommufd_fd)?;

    // Then what depends on the backend: the nodes it opens and the interrupt opt-in.
    ctx.backend = Some(backend.backend);
    ctx.open_nodes = true;
    for d in &devices {
        for p in device_problems(d, &ctx) {
            problems.push((d.name.clone(), p));
        }
    }
    let shared = match backend.backend {
        Backend::Iommufd if iommufd_fd.is_none() => Some(roots.dev_path("iommu")),
        Backend::Group => Some(roots.dev_path("vfio/vfio")),
        Backend::Iommufd => None,
    };
    if let Some(node) = shared {
        if let Some(p) = node_problem(&node, roots) {
            problems.push(("vm".into(), p));
        }
    }
    let isolation = irq_remap::detect(roots);
    if let Some(p) = isolation.problem(backend.backend) {
        problems.push(("vm".into(), p));
    }
    if !problems.is_empty() {
        return Err(DiscoveryError::NotAssignable { problems });
    }

    let mut notes = vec![isolation.summary(Some(backend.backend))];
    if guest_memory > 0 {
        notes.push(match (limits.ipc_lock, limits.memlock) {
            (true, _) => format!("pinning {}: CAP_IPC_LOCK, no limit", human(guest_memory)),
            (false, None) => format!("pinning {}: RLIMIT_MEMLOCK unlimited", human(guest_memory)),
            (false, Some(l)) => format!(
                "pinning {}: RLIMIT_MEMLOCK {} is enough",
                human(guest_memory),
                human(l)
            ),
        });
    }
    Ok(Plan {
        devices,
        backend,
        notes,
        iommufd_fd,
        roots: roots.clone(),
        specs: specs.to_vec(),
        choice,
        guest_memory,
    })
}

impl Plan {
    /// The backend every device of this VM uses.
    pub fn backend(&self) -> Backend {
        self.backend.backend
    }

    /// Whether any `managed=on` device still has to be bound to vfio-pci.
    pub fn needs_binding(&self) -> bool {
        self.devices.iter().any(|d| d.managed && !d.vfio_bound)
    }

    /// Binds every `managed=on` device to vfio-pci and plans again on the bound devices
    /// (their cdevs exist only now). Hold the returned guards for the VM's life: dropping
    /// them restores the original drivers. On error, guards already taken are dropped,
    /// which restores those devices.
    pub fn bind_managed(&self) -> Result<(Vec<ManagedBinding>, Plan), DiscoveryError> {
        let mut guards = Vec::new();
        for d in self.devices.iter().filter(|d| d.managed && !d.vfio_bound) {
            let Some(bdf) = d.bdf else {
                continue;
            };
            guards.push(ManagedBinding::new(bdf, &self.roots, d.managed_force)?);
        }
        let plan = plan(
            &self.specs,
            self.choice,
            self.iommufd_fd,
            self.guest_memory,
            &self.roots,
        )?;
        Ok((guards, plan))
    }
}

/// One line about a device: what it was given as, what it is, and the backend.
pub fn device_line(d: &ResolvedDevice, roots: &Roots, backend: &BackendDecision) -> String {
    let what = match (d.class, &d.parent) {
        (Some(c), _) => format!("{} {} {}", d.kind, d.vendor_device(), class_name(c)),
        (None, Some(parent)) => {
            format!("mdev {} on {parent}", d.mdev_type.as_deref().unwrap_or("?"))
        }
        (None, None) => d.kind.to_string(),
    };
    let group = match (d.group, &d.group_node) {
        (Some(g), Some(node)) => format!("group {g} ({})", show(roots, node)),
        _ => "no group".into(),
    };
    let cdev = match (&d.cdev, d.fd) {
        (_, Some(fd)) => format!("cdev fd {fd}"),
        (Some(c), None) => format!("cdev {} ({})", c.name, show(roots, &c.node)),
        (None, None) => format!(
            "no cdev ({})",
            d.cdev_absent.as_deref().unwrap_or("unknown")
        ),
    };
    let driver = match (&d.driver, d.managed && !d.vfio_bound) {
        (Some(drv), true) => format!("driver {drv} -> vfio-pci at start (managed)"),
        (None, true) => "no driver -> vfio-pci at start (managed)".into(),
        (Some(drv), false) => format!("driver {drv}"),
        (None, false) => "no driver".into(),
    };
    let id =
        d.id.as_deref()
            .map(|i| format!(" id={i}"))
            .unwrap_or_default();
    format!(
        "{} -> {} ({what}){id}, {driver}, {group}, {cdev}: backend {} ({})",
        d.given_as, d.name, backend.backend, backend.why
    )
}

fn show(roots: &Roots, p: &std::path::Path) -> String {
    roots
        .host_view(p)
        .unwrap_or_else(|| p.to_path_buf())
        .display()
        .to_string()
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.devices {
            writeln!(f, "device {}", device_line(d, &self.roots, &self.backend))?;
        }
        for n in &self.notes {
            writeln!(f, "vfio: {n}")?;
        }
        Ok(())
    }
}
