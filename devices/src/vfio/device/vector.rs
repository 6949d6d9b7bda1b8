//! Shared pieces of the MSI and MSI-X models: one vector's wiring to KVM.
//!
//! A vector owns the eventfd that VFIO signals and KVM's irqfd listens on (the same fd, so
//! irq-bypass can post the interrupt straight to the vCPU). Its GSI is allocated on first
//! use and kept until teardown. [`Vector::sync`] moves it between "delivering" (route set,
//! irqfd registered) and "quiet" in the only safe order: route before irqfd, irqfd off
//! before the route goes. While a vector is quiet VFIO keeps counting into the eventfd,
//! so registering the irqfd again on unmask delivers what arrived meanwhile.

use std::os::fd::AsRawFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::pci::{InterruptRouting, MsiMessage, RoutingError};

/// One MSI or MSI-X vector as KVM sees it.
#[derive(Debug)]
pub struct Vector {
    /// The eventfd shared by VFIO (trigger) and KVM (irqfd).
    pub eventfd: EventFd,
    gsi: Option<u32>,
    active: Option<MsiMessage>,
}

impl Vector {
    /// Whether an interrupt from the device waits in the eventfd (count above zero),
    /// without consuming it. While the vector is routed, KVM's irqfd drains the count at
    /// once; while it is masked the count stays until the irqfd is attached again.
    pub fn has_pending(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.eventfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, count 1, timeout 0 (no blocking); the fd
        // is owned by `self.eventfd`, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    /// A quiet vector with a fresh eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            eventfd: EventFd::new(EFD_NONBLOCK)?,
            gsi: None,
            active: None,
        })
    }

    /// Makes the vector deliver `msg` (`Some`) or go quiet (`None`).
    pub fn sync(
        &mut self,
        want: Option<MsiMessage>,
        routing: &dyn InterruptRouting,
    ) -> Result<(), RoutingError> {
        match (self.active, want) {
            (None, None) => Ok(()),
            (Some(cur), Some(msg)) if cur == msg => Ok(()),
            (Some(_), Some(msg)) => {
                // The irqfd follows the route, so a route update is enough.
                let gsi = self.gsi.ok_or(RoutingError::NotAllocated(0))?;
                routing.set_msi_route(gsi, msg)?;
                self.active = Some(msg);
                Ok(())
            }
            (None, Some(msg)) => {
                let gsi = match self.gsi {
                    Some(g) => g,
                    None => {
                        let g = routing.allocate_gsi()?;
                        self.gsi = Some(g);
                        g
                    }
                };
                routing.set_msi_route(gsi, msg)?;
                if let Err(e) = routing.register_irqfd(&self.eventfd, gsi) {
                    let _ = routing.remove_msi_route(gsi);
                    return Err(e);
                }
                self.active = Some(msg);
                Ok(())
            }
            (Some(_), None) => {
                let gsi = self.gsi.ok_or(RoutingError::NotAllocated(0))?;
                routing.unregister_irqfd(&self.eventfd, gsi)?;
                self.active = None;
                routing.remove_msi_route(gsi)
            }
        }
    }

    /// Quiets the vector and gives its GSI back.
    pub fn release(&mut self, routing: &dyn InterruptRouting) {
        if let Err(e) = self.sync(None, routing) {
            crate::warn_limited!("VFIO: could not quiet an MSI vector: {e}");
        }
        if let Some(g) = self.gsi.take() {
            if let Err(e) = routing.free_gsi(g) {
                crate::warn_limited!("VFIO: could not free GSI {g}: {e}");
            }
        }
    }
}
