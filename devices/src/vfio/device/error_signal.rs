//! What the host signals about the device: VFIO's error interrupt, and its request
//! interrupt (the host asks for the device back).
//!
//! The request: unbinding vfio-pci from a device whose fd is open blocks in the kernel,
//! which signals the eventfd given to `VFIO_PCI_REQ_IRQ_INDEX` (again every few seconds)
//! until the fd is closed. A hot-plugged device can then be taken from the guest through
//! its slot (src/hotplug.rs); one on bus 0 cannot, and the host's unbind waits for the
//! VM to end.
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
        Self::wire_index(name, dev, IrqIndex::Err)
    }

    /// The same for `index` (the error or the request index).
    pub(crate) fn wire_index(name: &str, dev: &dyn VfioDeviceOps, index: IrqIndex) -> Option<Self> {
        if dev.irq_info(index).is_none_or(|i| i.count == 0) {
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
        match dev.enable_irq(index, &[&fd]) {
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

    /// The eventfd VFIO signals when the host asks for the device back.
    pub fn request_fd(&self) -> Option<&EventFd> {
        self.request.as_ref().map(|e| &e.fd)
    }

    /// Points VFIO's request interrupt at `fd` instead of the device's own eventfd (a
    /// hot-plug slot's, which outlives the devices plugged into it); false when the
    /// device has no request index or the kernel refused.
    pub fn signal_requests_to(&mut self, fd: &EventFd) -> bool {
        if self.request.is_none() {
            return false;
        }
        match self.dev.enable_irq(IrqIndex::Req, &[fd]) {
            Ok(()) => {
                self.request = None;
                true
            }
            Err(e) => {
                log::warn!(
                    "{}: {e}; the host's requests for it go unanswered",
                    self.name
                );
                false
            }
        }
    }

    /// Whether the host asked for the device back since the last call (reads the
    /// eventfd).
    pub fn take_request(&self) -> bool {
        self.request
            .as_ref()
            .and_then(|r| r.fd.read().ok())
            .is_some_and(|n| n > 0)
    }
}
