//! The GSI routing rules as data: which GSIs exist, which MSI routes are set, which
//! irqfds point where, and the ordering rules of [`super::InterruptRouting`] checked on
//! every change. Pure, so the VMM's KVM owner ([`super::kvm_routing`]), the unit tests'
//! fake VM and the hardware probes all run the same rules.
//!
//! GSI numbering: 0..24 are the IOAPIC pins (0..16 are also wired to the two 8259 PICs,
//! exactly like the table KVM installs by itself on `KVM_CREATE_IRQCHIP`); MSI GSIs are
//! handed out from 24 upwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kvm_bindings::{
    kvm_irq_routing_entry, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};

use super::{MsiMessage, RoutingError};

/// IOAPIC input pins; GSIs below this are irqchip GSIs.
pub const IOAPIC_PINS: u32 = 24;
/// Legacy ISA IRQs also routed to the 8259 pair.
pub const PIC_PINS: u32 = 16;
/// The KVM table holds at most `KVM_MAX_IRQ_ROUTES` entries, 40 of which are the defaults.
pub const MAX_MSI_ROUTES: u32 = KVM_MAX_IRQ_ROUTES as u32 - IOAPIC_PINS - PIC_PINS;
/// One past the highest MSI GSI handed out.
pub const GSI_END: u32 = IOAPIC_PINS + MAX_MSI_ROUTES;

/// The routing table as data: pure, so the table building is testable without KVM.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    allocated: BTreeSet<u32>,
    msi: BTreeMap<u32, MsiMessage>,
    irqfds: HashMap<u32, usize>,
}

impl RouteTable {
    /// The lowest free MSI GSI.
    pub fn allocate(&mut self) -> Result<u32, RoutingError> {
        let gsi = (IOAPIC_PINS..GSI_END)
            .find(|g| !self.allocated.contains(g))
            .ok_or(RoutingError::GsiExhausted(MAX_MSI_ROUTES))?;
        self.allocated.insert(gsi);
        Ok(gsi)
    }

    /// Releases an MSI GSI that no longer has a route.
    pub fn free(&mut self, gsi: u32) -> Result<(), RoutingError> {
        if self.msi.contains_key(&gsi) {
            return Err(RoutingError::RouteStillSet(gsi));
        }
        if !self.allocated.remove(&gsi) {
            return Err(RoutingError::NotAllocated(gsi));
        }
        Ok(())
    }

    fn check_removable(&self, gsi: u32) -> Result<(), RoutingError> {
        if self.irqfds.get(&gsi).copied().unwrap_or(0) > 0 {
            return Err(RoutingError::IrqfdStillRegistered(gsi));
        }
        Ok(())
    }

    /// Adds or replaces the MSI route of an allocated GSI.
    pub fn set_msi(&mut self, gsi: u32, msg: MsiMessage) -> Result<(), RoutingError> {
        if !self.allocated.contains(&gsi) {
            return Err(RoutingError::NotAllocated(gsi));
        }
        self.msi.insert(gsi, msg);
        Ok(())
    }

    /// Removes the MSI route of `gsi`; refused while an irqfd points at it.
    pub fn remove_msi(&mut self, gsi: u32) -> Result<(), RoutingError> {
        self.check_removable(gsi)?;
        self.msi
            .remove(&gsi)
            .map(drop)
            .ok_or(RoutingError::NotAllocated(gsi))
    }

    /// Whether a resample irqfd may be attached to `gsi`: irqchip pins only.
    pub fn check_resample(&self, gsi: u32) -> Result<(), RoutingError> {
        if gsi < IOAPIC_PINS {
            Ok(())
        } else {
            Err(RoutingError::ResampleNeedsIrqchip(gsi))
        }
    }

    /// Whether an irqfd may be attached to `gsi` now.
    pub fn check_irqfd(&self, gsi: u32) -> Result<(), RoutingError> {
        if gsi < IOAPIC_PINS || self.msi.contains_key(&gsi) {
            Ok(())
        } else {
            Err(RoutingError::NoRoute(gsi))
        }
    }

    /// Counts an irqfd attached to `gsi`.
    pub fn irqfd_added(&mut self, gsi: u32) {
        *self.irqfds.entry(gsi).or_default() += 1;
    }

    /// Counts an irqfd detached from `gsi`.
    pub fn irqfd_removed(&mut self, gsi: u32) {
        if let Some(n) = self.irqfds.get_mut(&gsi) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.irqfds.remove(&gsi);
            }
        }
    }

    /// The MSI routes, by GSI.
    pub fn msi_routes(&self) -> &BTreeMap<u32, MsiMessage> {
        &self.msi
    }

    /// The GSIs at least one irqfd points at.
    pub fn irqfd_gsis(&self) -> impl Iterator<Item = u32> + '_ {
        self.irqfds.keys().copied()
    }

    /// Every route: the IOAPIC and PIC defaults, then the MSI routes in GSI order.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        let mut out = Vec::with_capacity((IOAPIC_PINS + PIC_PINS) as usize + self.msi.len());
        for gsi in 0..IOAPIC_PINS {
            out.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for gsi in 0..PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            out.push(irqchip_entry(gsi, chip, gsi % 8));
        }
        for (&gsi, msg) in &self.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = msg.address_lo;
            e.u.msi.address_hi = msg.address_hi;
            e.u.msi.data = msg.data;
            out.push(e);
        }
        out
    }
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = irqchip;
    e.u.irqchip.pin = pin;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::testing::MSG;

    #[test]
    fn defaults_match_kvms_own_table() {
        let e = RouteTable::default().entries();
        assert_eq!(e.len(), 40);
        // SAFETY (test): reading the union member that matches `type_`.
        let chip = |i: usize| unsafe {
            (
                e[i].gsi,
                e[i].type_,
                e[i].u.irqchip.irqchip,
                e[i].u.irqchip.pin,
            )
        };
        assert_eq!(chip(0), (0, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, 0));
        assert_eq!(chip(4), (4, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, 4));
        assert_eq!(
            chip(23),
            (23, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_IOAPIC, 23)
        );
        assert_eq!(
            chip(24 + 4),
            (4, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_PIC_MASTER, 4)
        );
        assert_eq!(
            chip(24 + 12),
            (12, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQCHIP_PIC_SLAVE, 4)
        );
    }

    #[test]
    fn msi_routes_are_added_updated_and_removed_without_touching_defaults() {
        let mut t = RouteTable::default();
        let a = t.allocate().unwrap();
        let b = t.allocate().unwrap();
        assert_eq!((a, b), (24, 25));
        t.set_msi(b, MSG).unwrap();
        t.set_msi(a, MsiMessage { data: 0x22, ..MSG }).unwrap();
        t.set_msi(a, MsiMessage { data: 0x23, ..MSG }).unwrap();
        let e = t.entries();
        assert_eq!(e.len(), 42);
        // SAFETY (test): entries 40.. are MSI entries.
        let msi =
            |i: usize| unsafe { (e[i].gsi, e[i].type_, e[i].u.msi.address_lo, e[i].u.msi.data) };
        assert_eq!(msi(40), (24, KVM_IRQ_ROUTING_MSI, 0xfee0_0000, 0x23));
        assert_eq!(msi(41), (25, KVM_IRQ_ROUTING_MSI, 0xfee0_0000, 0x4031));
        t.remove_msi(a).unwrap();
        assert_eq!(t.entries().len(), 41);
        t.free(a).unwrap();
        assert_eq!(t.allocate().unwrap(), 24, "freed GSIs are reused");
    }

    #[test]
    fn ordering_rules_are_enforced() {
        let mut t = RouteTable::default();
        assert!(matches!(
            t.set_msi(30, MSG),
            Err(RoutingError::NotAllocated(30))
        ));
        assert!(matches!(
            t.set_msi(4, MSG),
            Err(RoutingError::NotAllocated(4))
        ));
        let g = t.allocate().unwrap();
        assert!(
            matches!(t.check_irqfd(g), Err(RoutingError::NoRoute(_))),
            "irqfd before route"
        );
        assert!(t.check_irqfd(4).is_ok(), "irqchip pins are always routed");
        t.set_msi(g, MSG).unwrap();
        t.check_irqfd(g).unwrap();
        t.irqfd_added(g);
        assert!(matches!(
            t.remove_msi(g),
            Err(RoutingError::IrqfdStillRegistered(_))
        ));
        assert!(matches!(t.free(g), Err(RoutingError::RouteStillSet(_))));
        t.irqfd_removed(g);
        t.remove_msi(g).unwrap();
        t.free(g).unwrap();
        assert!(matches!(t.free(g), Err(RoutingError::NotAllocated(_))));
    }

    #[test]
    fn gsi_pool_is_bounded_by_the_kvm_table_size() {
        let mut t = RouteTable::default();
        for _ in 0..MAX_MSI_ROUTES {
            t.allocate().unwrap();
        }
        assert!(matches!(t.allocate(), Err(RoutingError::GsiExhausted(_))));
        for g in IOAPIC_PINS..GSI_END {
            t.set_msi(g, MSG).unwrap();
        }
        assert_eq!(t.entries().len(), KVM_MAX_IRQ_ROUTES);
    }
}
