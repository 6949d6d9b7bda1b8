//! Taking a device out of a running VM: a card leaving a root port's slot, after the
//! guest powered the slot off or when passvm forces it (docs/hotplug.md).
//!
//! The order is what keeps a guest from reaching a device that is being torn down: its
//! config space goes first (the guest's config cycles to the slot then read all-ones, so
//! no vCPU can turn decode or bus mastering back on), then its BAR traps (a stray MMIO
//! or port access reads all-ones instead of reaching the device), then the port's slot
//! state, and last the device model itself, whose drop switches its interrupts off
//! (each irqfd before its route), drops its BAR memslots, clears decode and bus
//! mastering and resets the function, before its VFIO descriptor closes and it leaves
//! the IOMMU space.

use std::sync::Mutex;

use crate::pci::host_bridge::PciRoot;
use crate::pci::root_port::RootPort;

/// Takes the card in root port `index`'s slot out of `pci`, its traps off the buses
/// (`remove_traps`, which returns how many there were), empties `port`'s slot, then
/// drops `device` (what holds the device model; every other reference to the model
/// must be gone by then: the PCI root's is dropped here, the buses' with the traps).
/// Each step is attempted whatever the one before returned: a device that leaves
/// leaves whole. Returns what went wrong, for the log.
pub fn unplug_from_port<D>(
    pci: &Mutex<PciRoot>,
    index: usize,
    port: Option<&Mutex<RootPort>>,
    remove_traps: impl FnOnce() -> usize,
    device: D,
) -> Vec<String> {
    let mut problems = Vec::new();
    let functions = pci
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove_card(index);
    match functions {
        Ok(f) => drop(f),
        Err(e) => problems.push(e.to_string()),
    }
    remove_traps();
    if let Some(port) = port {
        if let Err(e) = port.lock().unwrap_or_else(|p| p.into_inner()).remove_card() {
            problems.push(format!("root port {}: {e:?}", index + 1));
        }
    }
    drop(device);
    problems
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Weak};

    use super::*;
    use crate::pci::host_bridge::SharedPciDevice;
    use crate::pci::root_port::HotplugSignal;
    use crate::pci::MsiMessage;
    use crate::vfio::device::tests::{build, fake};
    use crate::vfio::device::VfioPciDevice;
    use crate::vfio::device_fd::IrqIndex;
    use crate::vfio::testing::{DevCall, RecordingVm, VmCall};
    use crate::vfio::vm::AddressSpace;

    struct NoSignal;
    impl HotplugSignal for NoSignal {
        fn signal(&self, _msg: MsiMessage) {}
    }

    /// What the guest could still reach when the model was dropped, and how many
    /// references to the model there were then.
    #[derive(Debug, PartialEq, Eq)]
    struct Reachable {
        config_space: bool,
        bar_trap: bool,
        card_in_slot: bool,
        refs: usize,
    }

    /// The last reference to the device model: records [`Reachable`] at the moment
    /// the model is dropped.
    struct LastRef {
        dev: Option<Arc<Mutex<VfioPciDevice>>>,
        pci: Arc<Mutex<PciRoot>>,
        port: Arc<Mutex<RootPort>>,
        vm: Arc<RecordingVm>,
        bar0: u64,
        seen: Arc<Mutex<Option<Reachable>>>,
    }

    impl Drop for LastRef {
        fn drop(&mut self) {
            let dev = self.dev.take();
            *self.seen.lock().unwrap() = Some(Reachable {
                config_space: self.pci.lock().unwrap().port_has_card(0),
                bar_trap: self.vm.owner_at(AddressSpace::Mmio, self.bar0).is_some(),
                card_in_slot: self.port.lock().unwrap().card_present(),
                refs: dev.as_ref().map_or(0, Arc::strong_count),
            });
            drop(dev);
        }
    }

    fn w(dev: &mut VfioPciDevice, off: usize, v: u32) {
        dev.write_config(off, 0, &v.to_le_bytes());
    }

    #[test]
    fn a_device_leaves_config_space_and_buses_before_it_is_quiesced_and_reset() {
        let (mut dev, d, vm) = build(fake());
        // The guest uses it: memory decode and bus mastering on, MSI-X enabled with
        // vector 0 unmasked (an irqfd and a route in KVM), a BAR memslot mapped.
        dev.write_config(crate::pci::config_space::COMMAND, 0, &[0x06]);
        w(&mut dev, 0x70, 0x8000_0000);
        let bar0 = dev.bar_summaries()[0].addr;
        crate::bus::BusDevice::write(&mut dev, bar0, 0x200c, &0u32.to_le_bytes());
        assert_eq!(vm.irqfds().len(), 1);
        assert!(!vm.slots().is_empty());
        assert!(vm.owner_at(AddressSpace::Mmio, bar0).is_some());

        let dev = Arc::new(Mutex::new(dev));
        let weak: Weak<Mutex<VfioPciDevice>> = Arc::downgrade(&dev);
        let pci = Arc::new(Mutex::new(PciRoot::new()));
        let port = Arc::new(Mutex::new(RootPort::new(1, 1, Box::new(NoSignal)).unwrap()));
        let index = pci.lock().unwrap().add_root_port(1, port.clone()).unwrap();
        let card: SharedPciDevice = dev.clone();
        pci.lock()
            .unwrap()
            .insert_card(index, vec![Some(card)])
            .unwrap();
        port.lock().unwrap().coldplug_card().unwrap();
        d.clear_calls();
        vm.clear();

        let seen = Arc::new(Mutex::new(None));
        let last = LastRef {
            dev: Some(dev),
            pci: pci.clone(),
            port: port.clone(),
            vm: vm.clone(),
            bar0,
            seen: seen.clone(),
        };
        let traps = vm.clone();
        let problems = unplug_from_port(&pci, index, Some(&port), || traps.remove_traps(), last);
        assert!(problems.is_empty(), "{problems:?}");

        assert_eq!(
            *seen.lock().unwrap(),
            Some(Reachable {
                config_space: false,
                bar_trap: false,
                card_in_slot: false,
                refs: 1
            }),
            "when the model went: off the PCI root, off the buses, the slot empty, \
             and the last reference"
        );
        assert!(weak.upgrade().is_none(), "the model is gone");
        // Its drop: interrupts off (the irqfd before its route), the memslot gone,
        // decode and bus mastering cleared, then the function reset, last.
        let calls = vm.calls();
        let irqfd_off = calls
            .iter()
            .position(|c| matches!(c, VmCall::UnregisterIrqfd(_)))
            .expect("irqfd unregistered");
        let route_off = calls
            .iter()
            .position(|c| matches!(c, VmCall::RemoveRoute(_)))
            .expect("route removed");
        assert!(irqfd_off < route_off, "{calls:?}");
        assert!(calls.iter().any(|c| matches!(c, VmCall::RemoveSlot(_))));
        assert!(vm.irqfds().is_empty() && vm.routes().is_empty() && vm.slots().is_empty());
        let dev_calls = d.calls();
        let disabled = dev_calls
            .iter()
            .position(|c| *c == DevCall::Disable(IrqIndex::Msix))
            .expect("MSI-X disabled in the host");
        let reset = dev_calls
            .iter()
            .position(|c| *c == DevCall::Reset)
            .expect("reset");
        assert!(disabled < reset, "{dev_calls:?}");
        assert_eq!(dev_calls.last(), Some(&DevCall::Reset), "{dev_calls:?}");
        assert_eq!(d.config_command() & 0x7, 0, "no decode, no bus mastering");
    }

    #[test]
    fn a_port_without_the_card_is_reported_and_the_device_still_goes() {
        let pci = Mutex::new(PciRoot::new());
        let (dev, d, vm) = build(fake());
        let traps = vm.clone();
        let problems = unplug_from_port(&pci, 3, None, || traps.remove_traps(), dev);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(d.calls().last(), Some(&DevCall::Reset));
    }
}
