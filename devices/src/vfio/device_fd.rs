//! The seam between the PCI device model and VFIO.
//!
//! [`VfioDeviceOps`] is everything [`crate::vfio::device::VfioPciDevice`] needs from a VFIO device
//! fd: region and IRQ info, region I/O, interrupt wiring, reset and the fd to mmap BARs
//! from. It is implemented for `vfio_ioctls::VfioDevice` (both the group and the cdev
//! backends open one) and by a fake in the unit tests, so the config-space, BAR and
//! interrupt logic runs without hardware.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;

pub use vfio_bindings::bindings::vfio::VFIO_IRQ_INFO_NORESIZE;
use vfio_bindings::bindings::vfio::{
    vfio_device_info, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

use crate::vfio::hot_reset;
use crate::vfio::sys::{VFIO_DEVICE_GET_INFO, VFIO_DEVICE_RESET, VFIO_DEVICE_SET_IRQS};

/// Region index of the expansion ROM.
pub const ROM_REGION: u32 = 6;
/// Region index of the PCI config space.
pub const CONFIG_REGION: u32 = 7;

/// The VFIO interrupt indexes a PCI device model uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqIndex {
    /// Legacy level-triggered INTx.
    Intx,
    /// MSI (capability 0x05).
    Msi,
    /// MSI-X (capability 0x11).
    Msix,
    /// The device's error signal (PCIe AER, raised by the host's AER driver).
    Err,
    /// The host asks for the device back (its driver is being unbound from vfio-pci).
    Req,
}

impl IrqIndex {
    /// The `VFIO_PCI_*_IRQ_INDEX` value.
    pub fn raw(self) -> u32 {
        match self {
            IrqIndex::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            IrqIndex::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqIndex::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
            IrqIndex::Err => VFIO_PCI_ERR_IRQ_INDEX,
            IrqIndex::Req => VFIO_PCI_REQ_IRQ_INDEX,
        }
    }
}

/// One mmappable window inside a region, as the kernel's sparse-mmap capability lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapArea {
    /// Offset from the start of the region.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// What the kernel says about one region (`VFIO_DEVICE_GET_REGION_INFO`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes; 0 for an unimplemented BAR or the upper half of a 64-bit BAR.
    pub size: u64,
    /// Offset of the region in the device fd (for pread/pwrite/mmap).
    pub offset: u64,
    /// The sparse-mmap list, when the kernel gave one: only these areas may be mmapped.
    pub sparse_areas: Option<Vec<MmapArea>>,
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the MSI-X table may be mmapped (we still trap it).
    pub msix_mappable: bool,
}

impl RegionInfo {
    /// The region can be read.
    pub fn readable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_READ != 0
    }
    /// The region can be written.
    pub fn writable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_WRITE != 0
    }
    /// The region (or its sparse areas) can be mmapped.
    pub fn mappable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

/// What the kernel says about one interrupt index (`VFIO_DEVICE_GET_IRQ_INFO`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqInfo {
    /// `VFIO_IRQ_INFO_*` flags.
    pub flags: u32,
    /// Number of vectors (0: the index is not supported).
    pub count: u32,
}

/// What a bus or slot hot reset did ([`VfioDeviceOps::hot_reset`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HotReset {
    /// Reset; the functions it reset (e.g. "0000:02:00.0, 0000:02:00.1").
    Done(String),
    /// No bus or slot reset above the device (the kernel offers none).
    Unavailable,
    /// Refused, or not attempted because an affected device is not ours: why.
    Refused(String),
}

/// A VFIO device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFdError {
    /// The kernel refused an operation; vfio-ioctls does not keep the errno for IRQ calls.
    #[error("VFIO {op} failed: {detail}")]
    Failed {
        /// The operation, e.g. "enable MSI-X".
        op: &'static str,
        /// What the crate or the kernel reported.
        detail: String,
    },
    /// An ioctl failed with a known errno.
    #[error("VFIO {op} failed: {source}")]
    Errno {
        /// The operation.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
}

/// Everything the PCI device model needs from a VFIO device.
pub trait VfioDeviceOps: Send + Sync {
    /// `VFIO_DEVICE_FLAGS_*` from `VFIO_DEVICE_GET_INFO`.
    fn device_flags(&self) -> u32;
    /// Info for region `index`, or `None` when the device has no such region.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` of region `index`. Failures leave `data` untouched.
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` of region `index`. Failures are logged and dropped.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]);
    /// Info for an interrupt index, or `None` when the device does not have it.
    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo>;
    /// Points vectors `0..fds.len()` of `index` at `fds` (`ACTION_TRIGGER`).
    fn enable_irq(&self, index: IrqIndex, fds: &[&EventFd]) -> Result<(), DeviceFdError>;
    /// Points vectors `start..start + fds.len()` of `index` at `fds`
    /// (`ACTION_TRIGGER`, one `SET_IRQS`); `None` leaves a vector without an eventfd.
    /// On a disabled index this enables it with `start + fds.len()` vectors. On an
    /// enabled index the kernel grows the set one vector at a time only when the index
    /// lacks [`VFIO_IRQ_INFO_NORESIZE`]; with it the call fails past the enabled count.
    fn set_irq_vectors(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> Result<(), DeviceFdError>;
    /// Tears down every vector of `index`.
    fn disable_irq(&self, index: IrqIndex) -> Result<(), DeviceFdError>;
    /// Unmasks INTx (VFIO auto-masks it on every assertion).
    fn unmask_intx(&self) -> Result<(), DeviceFdError>;
    /// Makes a write to `fd` unmask INTx inside the kernel (`ACTION_UNMASK` + eventfd).
    fn set_intx_unmask_fd(&self, fd: &EventFd) -> Result<(), DeviceFdError>;
    /// Issues `VFIO_DEVICE_RESET`. `Ok(false)` when the device has no reset.
    fn reset(&self) -> Result<bool, DeviceFdError>;
    /// Resets the bus or slot above the device (`VFIO_DEVICE_PCI_HOT_RESET`), which
    /// resets every function below it, when every one of them is this process's.
    fn hot_reset(&self) -> HotReset;
    /// The device fd, to mmap BAR areas at `RegionInfo::offset + area.offset`.
    fn mmap_fd(&self) -> RawFd;
}

/// `VFIO_DEVICE_GET_INFO` on a device fd; vfio-ioctls keeps the flags private.
fn query_device_flags(fd: RawFd) -> Result<u32, DeviceFdError> {
    let mut info = vfio_device_info {
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a valid, correctly sized vfio_device_info the kernel fills in; argsz
    // tells it how much it may write. The fd is a VFIO device fd owned by the caller.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_mut_ref(&Fd(fd), VFIO_DEVICE_GET_INFO(), &mut info)
    };
    if ret < 0 {
        return Err(DeviceFdError::Errno {
            op: "get device info",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(info.flags)
}

/// Borrowed raw fd for the ioctl helpers, which take `&impl AsRawFd`.
struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn region_info_of(dev: &VfioDevice, index: u32) -> Option<RegionInfo> {
    // Indexes above CONFIG are not used: vfio-ioctls shifts device-specific regions
    // (index >= 9) by one slot, so asking for them would return the wrong region.
    if index > CONFIG_REGION {
        return None;
    }
    let flags = dev.get_region_flags(index);
    let size = dev.get_region_size(index);
    if flags == 0 && size == 0 {
        return None;
    }
    let mut info = RegionInfo {
        flags,
        size,
        offset: dev.get_region_offset(index),
        ..Default::default()
    };
    for cap in dev.get_region_caps(index) {
        match cap {
            VfioRegionInfoCap::SparseMmap(s) => {
                info.sparse_areas = Some(
                    s.areas
                        .iter()
                        .map(|a| MmapArea {
                            offset: a.offset,
                            size: a.size,
                        })
                        .collect(),
                )
            }
            VfioRegionInfoCap::MsixMappable => info.msix_mappable = true,
            _ => {}
        }
    }
    Some(info)
}

fn in_bounds(dev: &VfioDevice, index: u32, offset: u64, len: usize) -> bool {
    index <= CONFIG_REGION
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= dev.get_region_size(index))
}

/// `VFIO_DEVICE_SET_IRQS` with eventfds for `start..start + fds.len()`, issued here
/// because vfio-ioctls only sends ranges starting at vector 0 (it cannot add one
/// MSI-X vector to an enabled set).
fn set_irq_eventfds(
    fd: RawFd,
    index: IrqIndex,
    start: u32,
    fds: &[Option<&EventFd>],
) -> Result<(), DeviceFdError> {
    let failed = |detail: String| DeviceFdError::Failed {
        op: "set interrupt eventfds",
        detail,
    };
    let count = u32::try_from(fds.len()).map_err(|_| failed("too many vectors".into()))?;
    // struct vfio_irq_set { argsz, flags, index, start, count, data[] } followed by one
    // s32 fd per vector; built as u32 words so the header stays 4-byte aligned.
    let mut words = Vec::with_capacity(5 + fds.len());
    words.extend([
        0,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        index.raw(),
        start,
        count,
    ]);
    words.extend(fds.iter().map(|f| f.map_or(-1, |e| e.as_raw_fd()) as u32));
    words[0] = (words.len() * 4) as u32;
    // SAFETY: the buffer is a complete vfio_irq_set whose argsz covers the header and
    // `count` fds; the kernel reads no further, writes nothing, and the buffer outlives
    // the call. `fd` is this device's open fd.
    let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_SET_IRQS() as _, words.as_ptr()) };
    if ret < 0 {
        return Err(DeviceFdError::Errno {
            op: "set interrupt eventfds",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl VfioDeviceOps for VfioDevice {
    fn device_flags(&self) -> u32 {
        query_device_flags(self.as_raw_fd()).unwrap_or_else(|e| {
            log::warn!("{e}; assuming the device has no reset");
            0
        })
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        region_info_of(self, index)
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        // vfio-ioctls adds offset + len unchecked; keep overflowing values away from it.
        if in_bounds(self, index, offset, data.len()) {
            VfioDevice::region_read(self, index, data, offset);
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        if in_bounds(self, index, offset, data.len()) {
            VfioDevice::region_write(self, index, data, offset);
        }
    }

    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        self.get_irq_info(index.raw()).map(|i| IrqInfo {
            flags: i.flags,
            count: i.count,
        })
    }

    fn enable_irq(&self, index: IrqIndex, fds: &[&EventFd]) -> Result<(), DeviceFdError> {
        VfioDevice::enable_irq(self, index.raw(), fds.to_vec()).map_err(|e| DeviceFdError::Failed {
            op: "enable interrupts",
            detail: format!("{index:?} with {} vectors: {e}", fds.len()),
        })
    }

    fn set_irq_vectors(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> Result<(), DeviceFdError> {
        set_irq_eventfds(self.as_raw_fd(), index, start, fds)
    }

    fn disable_irq(&self, index: IrqIndex) -> Result<(), DeviceFdError> {
        VfioDevice::disable_irq(self, index.raw()).map_err(|e| DeviceFdError::Failed {
            op: "disable interrupts",
            detail: format!("{index:?}: {e}"),
        })
    }

    fn unmask_intx(&self) -> Result<(), DeviceFdError> {
        self.unmask_irq(VFIO_PCI_INTX_IRQ_INDEX)
            .map_err(|e| DeviceFdError::Failed {
                op: "unmask INTx",
                detail: e.to_string(),
            })
    }

    fn set_intx_unmask_fd(&self, fd: &EventFd) -> Result<(), DeviceFdError> {
        self.set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![fd])
            .map_err(|e| DeviceFdError::Failed {
                op: "set the INTx unmask eventfd",
                detail: e.to_string(),
            })
    }

    fn reset(&self) -> Result<bool, DeviceFdError> {
        if self.device_flags() & VFIO_DEVICE_FLAGS_RESET == 0 {
            return Ok(false);
        }
        // Our own ioctl rather than VfioDevice::reset(), which throws the result away.
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is this device's fd.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(self, VFIO_DEVICE_RESET()) };
        if ret < 0 {
            return Err(DeviceFdError::Errno {
                op: "device reset",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(true)
    }

    fn hot_reset(&self) -> HotReset {
        let fd = self.as_raw_fd();
        let info = match hot_reset::info(fd) {
            Ok(Some(i)) => i,
            Ok(None) => return HotReset::Unavailable,
            Err(e) => return HotReset::Refused(format!("VFIO hot reset info: {e}")),
        };
        let fds = if self.iommufd_dev_id().is_some() || info.by_dev_id() {
            if !info.all_owned() {
                return HotReset::Refused(format!(
                    "a bus reset would reset {}, not all opened by this VM",
                    info.describe()
                ));
            }
            Vec::new()
        } else {
            match hot_reset::own_group_fds(Path::new("/proc/self/fd"), &info.groups()) {
                Ok(fds) => fds,
                Err(g) => {
                    return HotReset::Refused(format!(
                        "a bus reset would reset {}, and IOMMU group {g} is not this VM's",
                        info.describe()
                    ))
                }
            }
        };
        match hot_reset::reset(fd, &fds) {
            Ok(()) => HotReset::Done(info.describe()),
            // The kernel says ENOTTY also after a reset whose functions did not answer
            // in time (a bridge that never reports its link up again): say so.
            Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => HotReset::Refused(format!(
                "VFIO hot reset of {}: {e}; the kernel may have reset the bus and then not \
                 seen the link come back (its log says \"Link Active not set\")",
                info.describe()
            )),
            Err(e) => HotReset::Refused(format!("VFIO hot reset of {}: {e}", info.describe())),
        }
    }

    fn mmap_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}
