//! The VM's one IOMMU address space: a type1 container with its groups ([`group`]) or an
//! iommufd IOAS with its device cdevs ([`iommufd`]), the identity map of guest RAM into it
//! ([`dma`], run beside the guest's boot behind a [`DmaGate`]) and the checks before pinning ([`iova`], RLIMIT_MEMLOCK).
//!
//! One per VM, shared by every device, so RAM is pinned and accounted once. The types
//! every file here shares live in this file, so the backends and the RAM map import it and
//! never each other.
//!
//! Teardown: mappings go with the container (last group detached) or the IOAS (destroyed
//! when the last reference drops); there is no explicit unmap at exit.

pub(crate) mod device_type;
pub(crate) mod dma;
pub mod dma_gate;
pub(crate) mod group;
pub(crate) mod handle;
pub(crate) mod iommufd;
pub(crate) mod iova;
pub(crate) mod kvm_vfio;

use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioIommufd, VfioOps};

use super::device_fd::VfioDeviceOps;
use super::memlock::MemlockShortfall;
use device_type::{check_device_flags, UnsupportedDeviceType};
pub use dma::{all_cores, DmaReport, RamMap};
pub use dma_gate::{DmaGate, DmaState};
pub use handle::OwnedVfioDevice;

use iova::IovaRange;

/// Where to open a device from (the discovery step fills this in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSource {
    /// The device's sysfs directory (PCI function or mdev).
    pub sysfs: PathBuf,
    /// Its `/dev/vfio/devices/vfioN`, when known.
    pub cdev: Option<PathBuf>,
    /// A cdev fd opened by a launcher (`--device fd=N`); dup'ed, never closed by us.
    pub cdev_fd: Option<RawFd>,
}

/// Which kind of IOMMU address space the VM uses.
#[derive(Clone)]
pub enum IommuSpace {
    /// Legacy type1 container with groups.
    Group(Arc<VfioContainer>),
    /// iommufd IOAS with device cdevs.
    Iommufd(Arc<VfioIommufd>),
}

/// Opening the backend, a device, or mapping RAM failed.
#[derive(Debug, thiserror::Error)]
pub enum IommuError {
    /// A backend or device could not be opened.
    #[error("{what}: {}{hint}", chain(source))]
    Open {
        /// What was being opened.
        what: String,
        /// vfio-ioctls' error.
        #[source]
        source: vfio_ioctls::VfioError,
        /// How to fix it (starts with "; ").
        hint: &'static str,
    },
    /// A RAM range lies outside what the IOMMU can map.
    #[error(
        "guest RAM {start:#x}-{last:#x} is outside the IOVA ranges the host IOMMU can map \
         ({allowed}); give the VM less memory so its RAM stays inside them"
    )]
    OutsideIovaRanges {
        /// First byte of the offending range.
        start: u64,
        /// Last byte.
        last: u64,
        /// The allowed ranges.
        allowed: String,
    },
    /// Pinning guest RAM would exceed RLIMIT_MEMLOCK.
    #[error(transparent)]
    Memlock(#[from] MemlockShortfall),
    /// The kernel refused a mapping.
    #[error("DMA-mapping guest RAM {gpa:#x}+{size:#x} failed: {source}{hint}")]
    Map {
        /// Guest physical address (= IOVA).
        gpa: u64,
        /// Length.
        size: u64,
        /// vfio-ioctls' error.
        #[source]
        source: vfio_ioctls::VfioError,
        /// How to fix it.
        hint: &'static str,
    },
    /// The kernel refused an unmap.
    #[error("DMA-unmapping guest RAM {gpa:#x}+{size:#x} failed: {source}")]
    Unmap {
        /// Guest physical address (= IOVA).
        gpa: u64,
        /// Length.
        size: u64,
        /// vfio-ioctls' error.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// The helper thread's own set-up (the VMM's start hook: its seccomp filter) failed.
    #[error("the DMA map thread could not start: {0}")]
    HelperStart(String),
    /// The VM stopped while its RAM was being mapped.
    #[error("the DMA map of guest RAM was cancelled: the VM stopped while it ran")]
    Cancelled,
    /// A guest memory region has no host mapping.
    #[error("guest RAM region at {0:#x} has no host mapping to DMA-map")]
    NoHostAddress(u64),
    /// The opened device is not a PCI device.
    #[error(transparent)]
    UnsupportedType(#[from] UnsupportedDeviceType),
}

/// An error and its causes, "a: b: c" (vfio-ioctls keeps the errno in the causes).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl IommuSpace {
    /// "group" or "iommufd".
    pub fn name(&self) -> &'static str {
        match self {
            IommuSpace::Group(_) => "group",
            IommuSpace::Iommufd(_) => "iommufd",
        }
    }

    /// The `VfioOps` devices are opened against.
    pub fn ops(&self) -> Arc<dyn VfioOps> {
        match self {
            IommuSpace::Group(c) => c.clone(),
            IommuSpace::Iommufd(i) => i.clone(),
        }
    }

    /// The IOVA ranges the kernel reports (needs at least one device attached).
    pub fn iova_ranges(&self) -> std::io::Result<Vec<IovaRange>> {
        match self {
            IommuSpace::Group(c) => iova::type1_iova_ranges(c.as_ref()),
            IommuSpace::Iommufd(i) => iova::ioas_iova_ranges(i.iommufd().as_ref(), i.ioas().id()),
        }
    }

    /// Opens a device in this space: groups need its sysfs path; iommufd takes a
    /// pre-opened cdev fd, else the cdev path, else the sysfs path.
    ///
    /// A device whose `VFIO_DEVICE_GET_INFO` flags do not say PCI (platform, ccw, ...) is
    /// refused here, after opening, as the uAPI intends: only the kernel knows the type.
    pub fn open_device(&self, src: &DeviceSource) -> Result<OwnedVfioDevice, IommuError> {
        let dev = match self {
            IommuSpace::Group(c) => group::open_device(c, &src.sysfs)?,
            IommuSpace::Iommufd(i) => iommufd::open_device(i, src)?,
        };
        let name = src.sysfs.file_name().map_or_else(
            || src.sysfs.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        check_device_flags(&name, dev.device_flags())?;
        Ok(dev)
    }
}
