//! Errors the host reports for the device: VFIO's error interrupt.
//!
//! When the host's PCIe AER driver sees an error from a device bound to vfio-pci, it
//! calls vfio-pci's `error_detected`, which signals the eventfd given to
//! `VFIO_PCI_ERR_IRQ_INDEX` (the kernel offers that index, one vector, for PCIe
//! functions only). Without an eventfd there the error goes unnoticed by the VMM and the
//! guest keeps driving a device in an unknown state. passvm's answer is QEMU's: the VM
//! stops with a message naming the device. Injecting the error into the guest would
//! need a virtual root port with AER above the device, and passvm places devices on the
//! root bus as integrated endpoints, which have no such path (docs/passthrough.md).

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::VfioPciDevice;
use crate::vfio::device_fd::{IrqIndex, VfioDeviceOps};

/// The eventfd VFIO signals on a device error.
#[derive(Debug)]
pub(crate) struct ErrorSignal {
    fd: EventFd,
}

impl ErrorSignal {
    /// Gives VFIO an eventfd for the device's errors, or `None` when the device has no
    /// error index (conventional PCI) or the kernel refuses it (said once, in the log).
    pub(crate) fn wire(name: &str, dev: &dyn VfioDeviceOps) -> Option<Self> {
        if dev.irq_info(IrqIndex::Err).is_none_or(|i| i.count == 0) {
            return None;
        }
        let fd = match EventFd::new(EFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!(
                    "{name}: no eventfd for device errors ({e}); AER errors will go unnoticed"
                );
                return None;
            }
        };
        match dev.enable_irq(IrqIndex::Err, &[&fd]) {
            Ok(()) => Some(Self { fd }),
            Err(e) => {
                log::warn!("{name}: {e}; AER errors will go unnoticed");
                None
            }
        }
    }
}

impl VfioPciDevice {
    /// The eventfd the VMM polls for device errors ([`VfioPciDevice::take_error`]), when
    /// VFIO reports them for this device.
    pub fn error_fd(&self) -> Option<&EventFd> {
        self.error.as_ref().map(|e| &e.fd)
    }

    /// How many errors VFIO signalled since the last call (`None`: none). Reading
    /// clears the eventfd, so a level-triggered watch calms down.
    pub fn take_error(&self) -> Option<u64> {
        self.error.as_ref()?.fd.read().ok().filter(|n| *n > 0)
    }
}
