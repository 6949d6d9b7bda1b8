//! The types discovery's steps share: what a `--device` resolved to, which backend the VM
//! uses, and what stands in the way of assigning a device.
//!
//! The bottom of the folder: the steps (`resolve`, `assignable`, `backend_choice`,
//! `irq_remap`, `plan`) and the error import these types, never each other's.

use std::fmt;
use std::path::PathBuf;

use super::group::GroupMember;
use crate::vfio::naming::{Bdf, GuestAddr, RomChoice};

/// The bus a resolved device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A PCI device (`/sys/bus/pci`).
    Pci,
    /// A mediated device (`/sys/bus/mdev`); VFIO presents it as a PCI device.
    Mdev,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Pci => "pci",
            DeviceKind::Mdev => "mdev",
        })
    }
}

/// A device's VFIO character device (`/dev/vfio/devices/vfioN`), checked against sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdev {
    /// `vfioN`.
    pub name: String,
    /// The node under the `/dev` root.
    pub node: PathBuf,
    /// Its major:minor, as sysfs registers it and the node carries it.
    pub devnum: (u32, u32),
}

/// A device named by `--device`, with everything the backends and checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    /// The device part of `--device` as the user gave it (`fd=N` for fds).
    pub given_as: String,
    /// PCI or mdev.
    pub kind: DeviceKind,
    /// The sysfs name: a BDF for PCI, a UUID for mdev.
    pub name: String,
    /// The PCI address (PCI devices only).
    pub bdf: Option<Bdf>,
    /// The parent device of an mdev (its sysfs name).
    pub parent: Option<String>,
    /// The mdev type (`mtty-2`, ...).
    pub mdev_type: Option<String>,
    /// Canonical sysfs directory, under the sysfs root.
    pub sysfs: PathBuf,
    /// PCI vendor ID (not in sysfs for an mdev).
    pub vendor: Option<u16>,
    /// PCI device ID.
    pub device: Option<u16>,
    /// 24-bit PCI class code.
    pub class: Option<u32>,
    /// The bound driver.
    pub driver: Option<String>,
    /// Whether that driver is a VFIO driver.
    pub vfio_bound: bool,
    /// The IOMMU group, `None` when the device has no IOMMU behind it.
    pub group: Option<u32>,
    /// Every member of that group, this device included.
    pub group_members: Vec<GroupMember>,
    /// `/dev/vfio/N` under the `/dev` root (may not exist yet).
    pub group_node: Option<PathBuf>,
    /// The verified cdev, when the device has one.
    pub cdev: Option<Cdev>,
    /// Why there is no usable cdev (kernel without cdev support, node missing, ...).
    pub cdev_absent: Option<String>,
    /// A cdev fd handed over with `fd=N`.
    pub fd: Option<i32>,
    /// `id=`.
    pub id: Option<String>,
    /// `managed=on`.
    pub managed: bool,
    /// `managed=force`: bound even while the host uses it.
    pub managed_force: bool,
    /// `rombar=` / `romfile=`.
    pub rom: RomChoice,
    /// `addr=`.
    pub addr: Option<GuestAddr>,
    /// `port=`: the PCIe root port it sits behind from the start.
    pub port: Option<u8>,
}

impl ResolvedDevice {
    /// `vendor:device` in hex, or `-` when unknown.
    pub fn vendor_device(&self) -> String {
        match (self.vendor, self.device) {
            (Some(v), Some(d)) => format!("{v:04x}:{d:04x}"),
            _ => "-".into(),
        }
    }
}

/// The backend a VM uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `/dev/iommu` + `/dev/vfio/devices/vfioN`.
    Iommufd,
    /// `/dev/vfio/vfio` (type1v2) + `/dev/vfio/N`.
    Group,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Iommufd => "iommufd",
            Backend::Group => "group",
        })
    }
}

/// The kinds of problems, for callers that act on them (and for JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The device is not bound to a VFIO driver.
    NotVfioDriver,
    /// Another member of the IOMMU group is bound to a host driver.
    GroupNotViable,
    /// No IOMMU translates the device's DMA.
    NoIommu,
    /// A VFIO node does not exist.
    NodeMissing,
    /// A VFIO node cannot be opened read-write by this user.
    NodePermission,
    /// A VFIO node is open elsewhere (another VM).
    NodeBusy,
    /// RLIMIT_MEMLOCK is below the guest memory.
    Memlock,
    /// No interrupt remapping and no opt-in.
    InterruptRemapping,
}

impl ProblemKind {
    /// A stable identifier (`not-vfio-driver`, ...), used in JSON.
    pub fn id(&self) -> &'static str {
        match self {
            ProblemKind::NotVfioDriver => "not-vfio-driver",
            ProblemKind::GroupNotViable => "group-not-viable",
            ProblemKind::NoIommu => "no-iommu",
            ProblemKind::NodeMissing => "node-missing",
            ProblemKind::NodePermission => "node-permission",
            ProblemKind::NodeBusy => "node-busy",
            ProblemKind::Memlock => "memlock",
            ProblemKind::InterruptRemapping => "interrupt-remapping",
        }
    }
}

/// One reason a device cannot be assigned, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The kind.
    pub kind: ProblemKind,
    /// What is wrong.
    pub reason: String,
    /// What to do.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; fix: {}", self.reason, self.fix)
    }
}
