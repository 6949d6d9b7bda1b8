//! Every PCI and mediated device on the host, with its assignability: the data behind
//! `passvm devices`.

use std::fs;

use log::warn;

use super::assignable::{device_problems, CheckContext};
use super::class_names::is_host_side_bridge;
use super::irq_remap::{self, InterruptIsolation};
use super::model::Problem;
use super::model::ResolvedDevice;
use super::resolve::describe;
use super::sysfs::{dir_names, Roots};
use crate::vfio::memlock::HostLimits;

/// One device of the listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The device.
    pub device: ResolvedDevice,
    /// Why it cannot be assigned now (empty: assignable).
    pub problems: Vec<Problem>,
    /// A bridge that stays with the host; listed only with `--all`.
    pub bridge: bool,
}

/// The listing plus host-wide facts.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// PCI devices in address order, then mdevs.
    pub entries: Vec<Entry>,
    /// Interrupt remapping and its opt-in parameters.
    pub isolation: InterruptIsolation,
    /// This process's pinning limits.
    pub limits: HostLimits,
    /// Whether `/dev/iommu` exists.
    pub iommufd: bool,
}

/// Lists and checks every PCI and mdev device under `roots`.
pub fn inventory(roots: &Roots) -> Inventory {
    let mut entries = Vec::new();
    let ctx = CheckContext {
        roots,
        backend: None,
        becoming_vfio: &[],
        open_nodes: true,
    };
    for bus in ["pci", "mdev"] {
        let dir = roots.sys_path(format!("bus/{bus}/devices"));
        for name in dir_names(&dir) {
            let Ok(real) = fs::canonicalize(dir.join(&name)) else {
                continue;
            };
            match describe(&name, real, roots) {
                Ok(device) => {
                    let problems = device_problems(&device, &ctx);
                    let bridge = device.class.is_some_and(is_host_side_bridge);
                    entries.push(Entry {
                        device,
                        problems,
                        bridge,
                    });
                }
                Err(e) => warn!("skipping {name}: {e}"),
            }
        }
    }
    Inventory {
        entries,
        isolation: irq_remap::detect(roots),
        limits: HostLimits::current(),
        iommufd: roots.dev_path("iommu").exists(),
    }
}
