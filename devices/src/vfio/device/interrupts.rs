//! Interrupt mode switching: INTx is wired while neither MSI nor MSI-X is enabled.

use vmm_sys_util::eventfd::EventFd;

use super::VfioPciDevice;
use crate::pci::config_space::INTERRUPT_LINE;
#[cfg(test)]
use crate::vfio::device::msix::Msix;

impl VfioPciDevice {
    /// The MSI-X model, for tests that look inside.
    #[cfg(test)]
    pub(crate) fn msix_model(&self) -> Option<&Msix> {
        self.msix.as_ref()
    }

    /// The interrupt pin (1 = INTA# .. 4 = INTD#) when the device offers INTx.
    pub fn intx_pin(&self) -> Option<u8> {
        self.intx.as_ref()?;
        let pin = (self.read_config(INTERRUPT_LINE) >> 8) as u8;
        (1..=4).contains(&pin).then_some(pin)
    }

    /// The IOAPIC GSI of INTx, if the device offers INTx.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.intx.as_ref().map(|i| i.gsi())
    }

    /// The eventfd the VMM must poll, calling [`VfioPciDevice::handle_intx_eoi`] when it
    /// fires, or `None` when the kernel unmasks INTx by itself (the normal case).
    pub fn intx_eoi_fd(&self) -> Option<&EventFd> {
        self.intx
            .as_ref()
            .filter(|i| i.needs_eoi_poll())
            .map(|i| i.resample_fd())
    }

    /// The guest EOIed the INTx line (see [`VfioPciDevice::intx_eoi_fd`]).
    pub fn handle_intx_eoi(&self) {
        if let Some(i) = &self.intx {
            i.on_eoi(self.dev.as_ref());
        }
    }

    pub(super) fn intx_off(&mut self) {
        if let Some(i) = self.intx.as_mut() {
            i.disable(self.dev.as_ref(), self.routing.as_ref());
        }
    }

    pub(super) fn intx_back_if_idle(&mut self) {
        let msi_on = self.msi.as_ref().is_some_and(|m| m.enabled());
        let msix_on = self.msix.as_ref().is_some_and(|m| m.enabled());
        if !msi_on && !msix_on {
            if let Some(i) = self.intx.as_mut() {
                i.enable(self.dev.as_ref(), self.routing.as_ref());
            }
        }
    }
}
