//! One VFIO backend per VM: iommufd + device cdevs when every device can use it,
//! otherwise the legacy type1 container with groups.
//!
//! Mixing them would give a VM two IOMMU address spaces, so guest RAM would be pinned
//! and mapped twice; one backend per VM avoids that.

use std::str::FromStr;

use super::error::DiscoveryError;
use super::model::{Backend, ResolvedDevice};
use super::sysfs::{attr, dir_names, Roots};

/// What `--vfio-backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// iommufd when possible, else groups.
    #[default]
    Auto,
    /// iommufd + cdevs, or an error saying why not.
    Iommufd,
    /// Legacy container + groups.
    Group,
}

impl FromStr for BackendChoice {
    type Err = DiscoveryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "iommufd" | "cdev" => Ok(BackendChoice::Iommufd),
            "group" | "legacy" => Ok(BackendChoice::Group),
            _ => Err(DiscoveryError::BadBackendName(s.to_string())),
        }
    }
}

/// The chosen backend and the reason, for the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDecision {
    /// The backend.
    pub backend: Backend,
    /// Why it was chosen.
    pub why: String,
}

/// Whether this kernel gives VFIO devices cdevs: `Some(true)` when a registered
/// `vfio-dev` entry has a `dev` number, `Some(false)` when entries exist and none has one,
/// `None` when no device is bound to a VFIO driver yet.
pub fn kernel_has_cdevs(roots: &Roots) -> Option<bool> {
    let class = roots.sys_path("class/vfio-dev");
    let names = dir_names(&class);
    if names.is_empty() {
        return None;
    }
    Some(names.iter().any(|n| attr(&class.join(n), "dev").is_some()))
}

/// Why iommufd cannot serve these devices, or `None` when it can.
fn iommufd_blocker(
    devices: &[ResolvedDevice],
    roots: &Roots,
    iommufd_fd: Option<i32>,
) -> Option<String> {
    if iommufd_fd.is_none() && !roots.dev_path("iommu").exists() {
        return Some(
            "there is no /dev/iommu (the kernel needs CONFIG_IOMMUFD, and CONFIG_VFIO_DEVICE_CDEV for the device nodes)"
                .into(),
        );
    }
    let cdevs_expected = kernel_has_cdevs(roots) != Some(false);
    for d in devices {
        let pending_bind = d.managed && !d.vfio_bound && cdevs_expected;
        if d.fd.is_none() && d.cdev.is_none() && !pending_bind {
            let why = d.cdev_absent.as_deref().unwrap_or("no cdev");
            return Some(format!("{} has no VFIO cdev: {why}", d.name));
        }
    }
    None
}

/// Why the legacy group backend cannot serve these devices, or `None` when it can.
fn group_blocker(devices: &[ResolvedDevice], roots: &Roots) -> Option<String> {
    if let Some(d) = devices.iter().find(|d| d.fd.is_some()) {
        return Some(format!(
            "{} was passed as an open cdev fd, which only works with iommufd",
            d.given_as
        ));
    }
    if let Some(d) = devices.iter().find(|d| d.group.is_none()) {
        return Some(format!("{} has no IOMMU group", d.name));
    }
    if !roots.dev_path("vfio/vfio").exists() {
        return Some(
            "there is no /dev/vfio/vfio (the kernel needs CONFIG_VFIO_CONTAINER, or load vfio: modprobe vfio-pci)"
                .into(),
        );
    }
    None
}

/// Picks the backend for a VM's devices.
pub fn choose(
    devices: &[ResolvedDevice],
    choice: BackendChoice,
    roots: &Roots,
    iommufd_fd: Option<i32>,
) -> Result<BackendDecision, DiscoveryError> {
    let iommufd = iommufd_blocker(devices, roots, iommufd_fd);
    let group = || group_blocker(devices, roots);
    let iommufd_ok_why = if iommufd_fd.is_some() {
        "an iommufd was passed with --iommufd-fd and every device has a cdev"
    } else {
        "/dev/iommu exists and every device has a cdev"
    };
    match choice {
        BackendChoice::Iommufd => match iommufd {
            None => Ok(BackendDecision {
                backend: Backend::Iommufd,
                why: format!("requested; {iommufd_ok_why}"),
            }),
            Some(why) => Err(DiscoveryError::BackendUnavailable {
                backend: "iommufd",
                why: format!("{why}; use --vfio-backend auto or group"),
            }),
        },
        BackendChoice::Group => match group() {
            None => Ok(BackendDecision {
                backend: Backend::Group,
                why: "requested".into(),
            }),
            Some(why) => Err(DiscoveryError::BackendUnavailable {
                backend: "group",
                why,
            }),
        },
        BackendChoice::Auto => match iommufd {
            None => Ok(BackendDecision {
                backend: Backend::Iommufd,
                why: iommufd_ok_why.into(),
            }),
            Some(no_iommufd) => match group() {
                None => Ok(BackendDecision {
                    backend: Backend::Group,
                    why: format!("{no_iommufd}; using the legacy container with groups"),
                }),
                Some(no_group) => Err(DiscoveryError::BackendUnavailable {
                    backend: "auto",
                    why: format!("iommufd: {no_iommufd}; group: {no_group}"),
                }),
            },
        },
    }
}
