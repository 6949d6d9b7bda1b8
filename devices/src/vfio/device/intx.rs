//! INTx: a level-triggered IOAPIC pin driven by VFIO through a KVM resample irqfd.
//!
//! VFIO masks INTx in the host every time the device asserts it and signals `trigger`;
//! KVM raises the guest's GSI. When the guest EOIs, KVM lowers the line and signals
//! `resample`; VFIO, given `resample` as its unmask eventfd, unmasks the host line. No
//! userspace on the interrupt path, and the real EOI (not a guess from BAR accesses)
//! decides when the device may interrupt again.
//!
//! Setup order (each step closes a window the previous one leaves open):
//! 1. KVM resample irqfd on the GSI, so an assertion can never be lost;
//! 2. VFIO trigger eventfd: the device may now assert, VFIO auto-masks;
//! 3. VFIO unmask eventfd = `resample`;
//! 4. one explicit unmask, for an assertion that came between 2 and 3.
//!
//! Some VFIO drivers (the mtty mdev sample) answer step 3 with ENOTTY. Then KVM still
//! lowers the line at EOI, and the VMM must poll [`Intx::resample_fd`] and call
//! [`Intx::on_eoi`] whenever it fires ([`Intx::needs_eoi_poll`] says so); `on_eoi` tries
//! an explicit unmask and ignores drivers that do not mask at all.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::pci::InterruptRouting;
use crate::vfio::device_fd::{IrqIndex, VfioDeviceOps};

/// INTx wiring of one function.
#[derive(Debug)]
pub struct Intx {
    gsi: u32,
    trigger: EventFd,
    resample: EventFd,
    enabled: bool,
    kernel_unmask: bool,
}

impl Intx {
    /// INTx on IOAPIC pin `gsi` (the VMM picks it from the slot and the interrupt pin).
    pub fn new(gsi: u32) -> std::io::Result<Self> {
        Ok(Self {
            gsi,
            trigger: EventFd::new(EFD_NONBLOCK)?,
            resample: EventFd::new(EFD_NONBLOCK)?,
            enabled: false,
            kernel_unmask: false,
        })
    }

    /// The GSI the guest sees this function's INTx on.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// True while INTx is wired.
    #[cfg(test)]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True when the VFIO driver refused the unmask eventfd: the VMM must then poll
    /// [`Intx::resample_fd`] and call [`Intx::on_eoi`].
    pub fn needs_eoi_poll(&self) -> bool {
        self.enabled && !self.kernel_unmask
    }

    /// The eventfd KVM signals at guest EOI.
    pub fn resample_fd(&self) -> &EventFd {
        &self.resample
    }

    /// Wires INTx (see the module docs for the order). Errors leave it unwired.
    pub fn enable(&mut self, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        if self.enabled {
            return;
        }
        if let Err(e) =
            routing.register_irqfd_with_resample(&self.trigger, &self.resample, self.gsi)
        {
            crate::error_limited!(
                "VFIO: INTx on GSI {}: {e}; the device's legacy interrupt will not arrive",
                self.gsi
            );
            return;
        }
        if let Err(e) = dev.enable_irq(IrqIndex::Intx, &[&self.trigger]) {
            crate::error_limited!("VFIO: {e}; the device's legacy interrupt will not arrive");
            let _ = routing.unregister_irqfd(&self.trigger, self.gsi);
            return;
        }
        self.enabled = true;
        self.kernel_unmask = match dev.set_intx_unmask_fd(&self.resample) {
            Ok(()) => true,
            Err(e) => {
                log::info!("VFIO: {e}; INTx is unmasked from userspace at guest EOI instead");
                false
            }
        };
        // Drivers that do not auto-mask refuse this too; that is fine.
        let _ = dev.unmask_intx();
    }

    /// Unwires INTx: VFIO first (no new assertions), then the irqfd.
    pub fn disable(&mut self, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        if !self.enabled {
            return;
        }
        if let Err(e) = dev.disable_irq(IrqIndex::Intx) {
            crate::warn_limited!("VFIO: {e}");
        }
        if let Err(e) = routing.unregister_irqfd(&self.trigger, self.gsi) {
            crate::warn_limited!("VFIO: INTx irqfd on GSI {}: {e}", self.gsi);
        }
        self.enabled = false;
        self.kernel_unmask = false;
        // A stale count would assert the line the moment INTx is wired again.
        let _ = self.trigger.read();
        let _ = self.resample.read();
    }

    /// The guest EOIed the line (the resample eventfd fired): unmask from userspace.
    pub fn on_eoi(&self, dev: &dyn VfioDeviceOps) {
        let _ = self.resample.read();
        if self.enabled {
            let _ = dev.unmask_intx();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::device_fd::IrqInfo;
    use crate::vfio::testing::{DevCall, FakeDevice, RecordingVm, VmCall};

    fn dev(unmask_unsupported: bool) -> FakeDevice {
        let mut d = FakeDevice::new(vec![0; 256]);
        d.irqs
            .insert(IrqIndex::Intx, IrqInfo { flags: 7, count: 1 });
        d.unmask_fd_unsupported = unmask_unsupported;
        d
    }

    #[test]
    fn wiring_order_is_kvm_first_then_trigger_then_unmask_fd_then_unmask() {
        let (d, vm) = (dev(false), RecordingVm::new());
        let mut i = Intx::new(10).unwrap();
        i.enable(&d, &vm);
        assert_eq!(vm.calls(), vec![VmCall::ResampleIrqfd(10)]);
        assert_eq!(
            d.calls(),
            vec![
                DevCall::Enable(IrqIndex::Intx, 1),
                DevCall::SetUnmaskFd,
                DevCall::UnmaskIntx
            ]
        );
        assert!(i.enabled() && !i.needs_eoi_poll());
        d.clear_calls();
        i.disable(&d, &vm);
        assert_eq!(d.calls(), vec![DevCall::Disable(IrqIndex::Intx)]);
        assert_eq!(vm.calls().last(), Some(&VmCall::UnregisterIrqfd(10)));
    }

    #[test]
    fn mtty_style_enotty_falls_back_to_polling_the_resample_fd() {
        let (d, vm) = (dev(true), RecordingVm::new());
        let mut i = Intx::new(11).unwrap();
        i.enable(&d, &vm);
        assert!(i.enabled(), "ENOTTY on the unmask eventfd is not fatal");
        assert!(i.needs_eoi_poll());
        i.resample_fd().write(1).unwrap();
        d.clear_calls();
        i.on_eoi(&d);
        assert_eq!(d.calls(), vec![DevCall::UnmaskIntx]);
        assert!(
            i.resample_fd().read().is_err(),
            "drained (non-blocking read would block)"
        );
    }

    #[test]
    fn a_failed_vfio_enable_rolls_back_the_irqfd() {
        let mut d = FakeDevice::new(vec![0; 256]);
        d.irqs
            .insert(IrqIndex::Intx, IrqInfo { flags: 7, count: 0 });
        let vm = RecordingVm::new();
        let mut i = Intx::new(5).unwrap();
        i.enable(&d, &vm);
        assert!(!i.enabled());
        assert_eq!(
            vm.calls(),
            vec![VmCall::ResampleIrqfd(5), VmCall::UnregisterIrqfd(5)]
        );
    }

    #[test]
    fn a_non_irqchip_gsi_is_refused_without_touching_vfio() {
        let (d, vm) = (dev(false), RecordingVm::new());
        let mut i = Intx::new(40).unwrap();
        i.enable(&d, &vm);
        assert!(!i.enabled());
        assert!(d.calls().is_empty());
    }
}
