//! The VM's one owner of the KVM GSI routing table.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table. Anything that called it on its own would
//! drop the IOAPIC/PIC defaults (and with them the serial port and INTx) or another device's
//! MSI routes, so every route change goes through [`Interrupts`], which keeps the complete
//! table ([`RouteTable`], where the ordering rules of [`InterruptRouting`] are checked) and
//! re-sends it on each change.

use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::KvmIrqRouting;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::route_table::{RouteTable, MAX_MSI_ROUTES};
use super::{InterruptRouting, MsiMessage, RoutingError};

/// The VM's interrupt owner: the route table plus the VM fd it is sent to.
pub struct Interrupts {
    vm: Arc<VmFd>,
    table: Mutex<RouteTable>,
}

fn kvm_err(op: &'static str, gsi: u32) -> impl FnOnce(vmm_sys_util::errno::Error) -> RoutingError {
    move |e| RoutingError::Kvm {
        op,
        gsi,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

impl Interrupts {
    /// Takes ownership of routing for `vm` (whose irqchip must exist) and installs the defaults.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, RoutingError> {
        let me = Self {
            vm,
            table: Mutex::new(RouteTable::default()),
        };
        me.send(&me.lock())?;
        Ok(me)
    }

    /// The table lock is held across the ioctl so two updates cannot send out of order.
    fn lock(&self) -> MutexGuard<'_, RouteTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, table: &RouteTable) -> Result<(), RoutingError> {
        let entries = table.entries();
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| RoutingError::GsiExhausted(MAX_MSI_ROUTES))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(kvm_err("KVM_SET_GSI_ROUTING", 0))
    }

    /// Applies `change` to a copy of the table and commits it only if KVM accepts the result,
    /// so a refused update leaves both sides as they were.
    fn update(
        &self,
        change: impl FnOnce(&mut RouteTable) -> Result<(), RoutingError>,
    ) -> Result<(), RoutingError> {
        let mut table = self.lock();
        let mut next = table.clone();
        change(&mut next)?;
        self.send(&next)?;
        *table = next;
        Ok(())
    }
}

impl InterruptRouting for Interrupts {
    fn allocate_gsi(&self) -> Result<u32, RoutingError> {
        self.lock().allocate()
    }

    fn free_gsi(&self, gsi: u32) -> Result<(), RoutingError> {
        self.lock().free(gsi)
    }

    fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> Result<(), RoutingError> {
        self.update(|t| {
            routes
                .iter()
                .try_for_each(|&(gsi, msg)| t.set_msi(gsi, msg))
        })
    }

    fn remove_msi_route(&self, gsi: u32) -> Result<(), RoutingError> {
        self.update(|t| t.remove_msi(gsi))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        let mut table = self.lock();
        table.check_irqfd(gsi)?;
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(kvm_err("KVM_IRQFD", gsi))?;
        table.irqfd_added(gsi);
        Ok(())
    }

    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), RoutingError> {
        let mut table = self.lock();
        table.check_resample(gsi)?;
        self.vm
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(kvm_err("KVM_IRQFD (resample)", gsi))?;
        table.irqfd_added(gsi);
        Ok(())
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        let mut table = self.lock();
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(kvm_err("KVM_IRQFD (deassign)", gsi))?;
        table.irqfd_removed(gsi);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::testing::MSG;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// The KVM half, on this machine's /dev/kvm (ioctls work even where guests cannot run).
    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn kvm_accepts_the_table_and_irqfds() {
        let vm = Arc::new(crate::vfio::testing::kvm_vm());
        vm.create_irq_chip().unwrap();
        let irq = Interrupts::new(vm).unwrap();
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        let resample = EventFd::new(EFD_NONBLOCK).unwrap();
        irq.register_irqfd(&efd, 4).unwrap();
        irq.unregister_irqfd(&efd, 4).unwrap();
        irq.register_irqfd_with_resample(&efd, &resample, 10)
            .unwrap();
        irq.unregister_irqfd(&efd, 10).unwrap();
        assert!(matches!(
            irq.register_irqfd_with_resample(&efd, &resample, 30),
            Err(RoutingError::ResampleNeedsIrqchip(30))
        ));

        let gsis: Vec<u32> = (0..4).map(|_| irq.allocate_gsi().unwrap()).collect();
        let routes: Vec<_> = gsis
            .iter()
            .map(|&g| {
                (
                    g,
                    MsiMessage {
                        data: 0x30 + g,
                        ..MSG
                    },
                )
            })
            .collect();
        assert!(matches!(
            irq.register_irqfd(&efd, gsis[0]),
            Err(RoutingError::NoRoute(_))
        ));
        irq.set_msi_routes(&routes).unwrap();
        irq.register_irqfd(&efd, gsis[0]).unwrap();
        assert!(matches!(
            irq.remove_msi_route(gsis[0]),
            Err(RoutingError::IrqfdStillRegistered(_))
        ));
        irq.set_msi_route(gsis[0], MsiMessage { data: 0x41, ..MSG })
            .unwrap();
        irq.unregister_irqfd(&efd, gsis[0]).unwrap();
        irq.remove_msi_route(gsis[0]).unwrap();
        irq.free_gsi(gsis[0]).unwrap();
        assert_eq!(irq.lock().entries().len(), 43);
    }
}
