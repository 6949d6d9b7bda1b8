//! An opened `vfio_ioctls::VfioDevice` whose teardown cannot panic.
//!
//! vfio-ioctls' `Drop` for `VfioDevice` unwraps: for a group device it re-reads
//! `<sysfs>/iommu_group` (panics if the device vanished from sysfs, e.g. after a
//! surprise removal or an unbind behind our back), for a cdev it unwraps the IOAS detach
//! and the KVM-VFIO FILE_DEL. passvm is built with `panic = "abort"`, so any of those
//! would kill the process during cleanup. This wrapper checks the preconditions first and,
//! when they do not hold (or a panic is already unwinding), leaks the device instead: the
//! kernel releases the fds at process exit.

use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;

use vfio_ioctls::VfioDevice;
use vmm_sys_util::eventfd::EventFd;

use crate::vfio::device_fd::{
    DeviceFdError, HotReset, IrqIndex, IrqInfo, RegionInfo, VfioDeviceOps,
};

/// Which backend opened the device (decides what its `Drop` needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// Through its group; the sysfs path must still resolve at drop time.
    Group {
        /// The device's sysfs directory.
        sysfs: PathBuf,
    },
    /// Through its cdev bound to an iommufd.
    Cdev,
}

/// A VFIO device with a teardown that never panics.
pub struct OwnedVfioDevice {
    inner: Option<VfioDevice>,
    opened: Opened,
}

impl OwnedVfioDevice {
    /// Wraps a device opened through `opened`.
    pub fn new(dev: VfioDevice, opened: Opened) -> Self {
        Self {
            inner: Some(dev),
            opened,
        }
    }

    fn dev(&self) -> Option<&VfioDevice> {
        self.inner.as_ref()
    }

    /// The vfio-ioctls device, for calls outside [`VfioDeviceOps`] (diagnostics such as
    /// `trigger_irq`).
    pub fn inner(&self) -> Option<&VfioDevice> {
        self.dev()
    }

    fn safe_to_drop(&self) -> bool {
        if std::thread::panicking() {
            return false;
        }
        match &self.opened {
            Opened::Group { sysfs } => std::fs::read_link(sysfs.join("iommu_group")).is_ok(),
            Opened::Cdev => self.dev().is_some_and(|d| {
                // SAFETY: F_GETFD only queries the descriptor flags.
                unsafe { libc::fcntl(d.as_raw_fd(), libc::F_GETFD) != -1 }
            }),
        }
    }
}

impl Drop for OwnedVfioDevice {
    fn drop(&mut self) {
        if !self.safe_to_drop() {
            log::warn!(
                "VFIO: {:?} cannot be released cleanly (device gone from sysfs?); leaving it to the kernel at exit",
                self.opened
            );
            std::mem::forget(self.inner.take());
        }
    }
}

const GONE: &str = "the device was released";

impl VfioDeviceOps for OwnedVfioDevice {
    fn device_flags(&self) -> u32 {
        self.dev().map_or(0, |d| d.device_flags())
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.dev()?.region_info(index)
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        if let Some(d) = self.dev() {
            VfioDeviceOps::region_read(d, index, offset, data)
        }
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        if let Some(d) = self.dev() {
            VfioDeviceOps::region_write(d, index, offset, data)
        }
    }
    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        self.dev()?.irq_info(index)
    }
    fn enable_irq(&self, index: IrqIndex, fds: &[&EventFd]) -> Result<(), DeviceFdError> {
        self.dev().ok_or(gone())?.enable_irq_fds(index, fds)
    }
    fn set_irq_vectors(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> Result<(), DeviceFdError> {
        VfioDeviceOps::set_irq_vectors(self.dev().ok_or(gone())?, index, start, fds)
    }
    fn disable_irq(&self, index: IrqIndex) -> Result<(), DeviceFdError> {
        VfioDeviceOps::disable_irq(self.dev().ok_or(gone())?, index)
    }
    fn unmask_intx(&self) -> Result<(), DeviceFdError> {
        self.dev().ok_or(gone())?.unmask_intx()
    }
    fn set_intx_unmask_fd(&self, fd: &EventFd) -> Result<(), DeviceFdError> {
        self.dev().ok_or(gone())?.set_intx_unmask_fd(fd)
    }
    fn reset(&self) -> Result<bool, DeviceFdError> {
        VfioDeviceOps::reset(self.dev().ok_or(gone())?)
    }
    fn hot_reset(&self) -> HotReset {
        match self.dev() {
            Some(d) => VfioDeviceOps::hot_reset(d),
            None => HotReset::Refused(GONE.to_string()),
        }
    }
    fn mmap_fd(&self) -> RawFd {
        self.dev().map_or(-1, |d| d.as_raw_fd())
    }
}

fn gone() -> DeviceFdError {
    DeviceFdError::Failed {
        op: "access",
        detail: GONE.to_string(),
    }
}

/// Method-call sugar so the trait's `enable_irq` is not confused with the inherent one.
trait EnableIrqFds {
    fn enable_irq_fds(&self, index: IrqIndex, fds: &[&EventFd]) -> Result<(), DeviceFdError>;
}

impl EnableIrqFds for VfioDevice {
    fn enable_irq_fds(&self, index: IrqIndex, fds: &[&EventFd]) -> Result<(), DeviceFdError> {
        VfioDeviceOps::enable_irq(self, index, fds)
    }
}
