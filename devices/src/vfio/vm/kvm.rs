//! A ready [`VmOps`] for a KVM VM with [`SharedBus`] buses, one per device.
//!
//! Memory slots come from a pool shared by every device (above the slots the VMM uses for
//! RAM). Every range and slot a device gets is its own: its bus ranges carry its
//! [`Owner`], so it can remove only those; a BAR range must lie inside the VM's BAR
//! windows ([`BarWindows`]: no RAM, LAPIC, IOAPIC, MSI page or ECAM there) and a slot
//! inside one of the device's own placed memory ranges. Bus changes take effect at once
//! (a [`SharedBus`] holds no lock while a device runs), so a refused or failed placement
//! is known to the device when it asks, and it never keeps a stale record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use super::{AddressSpace, VmOps, VmOpsError};
use crate::bus::{BusDevice, Owner, SharedBus};
use crate::pci::bar::BarWindows;

/// KVM memory slot numbers for device memory, shared by all devices of a VM.
#[derive(Debug)]
pub struct SlotPool {
    inner: Mutex<(u32, u32, Vec<u32>)>, // (next, end, freed)
}

impl SlotPool {
    /// Slots `first..end` (keep `first` above the VMM's RAM slots).
    pub fn new(first: u32, end: u32) -> Self {
        Self {
            inner: Mutex::new((first, end, Vec::new())),
        }
    }

    fn take(&self) -> Option<u32> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.2.pop() {
            return Some(s);
        }
        (g.0 < g.1).then(|| {
            g.0 += 1;
            g.0 - 1
        })
    }

    fn give(&self, slot: u32) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .2
            .push(slot);
    }
}

/// [`VmOps`] over a KVM VM and the VMM's two buses, for one device.
pub struct KvmVmOps {
    vm: Arc<VmFd>,
    slots: Arc<SlotPool>,
    /// This device's slots: slot -> (gpa, size, host address).
    live: Mutex<BTreeMap<u32, (u64, u64, u64)>>,
    // Weak: the buses own the device, which owns these services.
    pio: Weak<SharedBus>,
    mmio: Weak<SharedBus>,
    owner: Owner,
    windows: BarWindows,
    device: OnceLock<Weak<Mutex<dyn BusDevice>>>,
    /// This device's ranges on the buses: (space, base) -> length.
    traps: Mutex<BTreeMap<(AddressSpace, u64), u64>>,
}

impl KvmVmOps {
    /// Services for one device whose BARs may decode in `windows`; call
    /// [`KvmVmOps::set_device`] once the device exists.
    pub fn new(
        vm: Arc<VmFd>,
        slots: Arc<SlotPool>,
        pio: &Arc<SharedBus>,
        mmio: &Arc<SharedBus>,
        windows: BarWindows,
    ) -> Self {
        Self {
            vm,
            slots,
            live: Mutex::new(BTreeMap::new()),
            pio: Arc::downgrade(pio),
            mmio: Arc::downgrade(mmio),
            owner: Owner::unique(),
            windows,
            device: OnceLock::new(),
            traps: Mutex::new(BTreeMap::new()),
        }
    }

    /// The device the buses route trapped ranges to (held weakly: the device owns us).
    pub fn set_device(&self, device: &Arc<Mutex<dyn BusDevice>>) {
        let _ = self.device.set(Arc::downgrade(device));
    }

    /// Inserts the device's initial trapped ranges (at setup).
    pub fn insert_traps(&self, ranges: &[(AddressSpace, u64, u64)]) -> Result<(), VmOpsError> {
        for &(space, base, len) in ranges {
            self.register_trap(space, base, len)?;
        }
        Ok(())
    }

    /// The owner of this device's bus ranges.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Takes every range of this device off the buses (it leaves the VM); returns how
    /// many there were.
    pub fn remove_all_traps(&self) -> usize {
        lock(&self.traps).clear();
        [&self.pio, &self.mmio]
            .into_iter()
            .filter_map(Weak::upgrade)
            .map(|b| b.remove_owner(self.owner))
            .sum()
    }

    fn bus(&self, space: AddressSpace) -> Result<Arc<SharedBus>, VmOpsError> {
        match space {
            AddressSpace::Pio => &self.pio,
            AddressSpace::Mmio => &self.mmio,
        }
        .upgrade()
        .ok_or_else(|| VmOpsError::Other("the VM's buses are gone (shutting down)".into()))
    }

    fn device(&self) -> Result<Arc<Mutex<dyn BusDevice>>, VmOpsError> {
        self.device
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| VmOpsError::Other("the device is not attached to its buses".into()))
    }

    /// Whether `[gpa, gpa + size)` lies inside one of this device's memory ranges.
    fn inside_own_mmio(&self, gpa: u64, size: u64) -> bool {
        let Some(end) = gpa.checked_add(size) else {
            return false;
        };
        lock(&self.traps)
            .range(..=(AddressSpace::Mmio, gpa))
            .next_back()
            .is_some_and(|(&(space, base), &len)| {
                space == AddressSpace::Mmio && base <= gpa && end <= base.saturating_add(len)
            })
    }

    fn set_region(&self, slot: u32, gpa: u64, size: u64, host: u64) -> Result<(), VmOpsError> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: `host..host+size` is a live mmap of device memory owned by the device
        // model, which removes the slot (this call with size 0) before it unmaps.
        unsafe { self.vm.set_user_memory_region(r) }.map_err(|source| VmOpsError::Kvm {
            op: "KVM_SET_USER_MEMORY_REGION",
            source,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VmOps for KvmVmOps {
    fn add_memslot(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, VmOpsError> {
        if !self.inside_own_mmio(gpa, size) {
            return Err(VmOpsError::Refused(format!(
                "{gpa:#x}+{size:#x} is not inside one of the device's placed BARs"
            )));
        }
        let slot = self
            .slots
            .take()
            .ok_or(VmOpsError::Exhausted("KVM memory slots"))?;
        if let Err(e) = self.set_region(slot, gpa, size, host_addr) {
            self.slots.give(slot);
            return Err(e);
        }
        lock(&self.live).insert(slot, (gpa, size, host_addr));
        Ok(slot)
    }

    fn remove_memslot(&self, slot: u32) -> Result<(), VmOpsError> {
        let Some((gpa, _, host)) = lock(&self.live).remove(&slot) else {
            return Err(VmOpsError::Other(format!("memory slot {slot} is not ours")));
        };
        self.set_region(slot, gpa, 0, host)?;
        self.slots.give(slot);
        Ok(())
    }

    fn register_trap(&self, space: AddressSpace, base: u64, len: u64) -> Result<(), VmOpsError> {
        let io = space == AddressSpace::Pio;
        if !self.windows.contains(io, base, len) {
            return Err(VmOpsError::Refused(format!(
                "{base:#x}+{len:#x} is outside the VM's {} BAR windows ({})",
                if io { "I/O-port" } else { "MMIO" },
                self.windows.describe(io)
            )));
        }
        let dev = self.device()?;
        self.bus(space)?
            .insert(self.owner, dev, base, len)
            .map_err(|e| VmOpsError::Refused(e.to_string()))?;
        lock(&self.traps).insert((space, base), len);
        Ok(())
    }

    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError> {
        lock(&self.traps).remove(&(space, base));
        self.bus(space)?
            .remove(self.owner, base)
            .map(|_| ())
            .map_err(|e| VmOpsError::Other(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ones;
    impl BusDevice for Ones {
        fn read(&mut self, _b: u64, _o: u64, data: &mut [u8]) {
            data.fill(1);
        }
        fn write(&mut self, _b: u64, _o: u64, _d: &[u8]) {}
    }

    struct Fixture {
        o: KvmVmOps,
        _dev: Arc<Mutex<dyn BusDevice>>,
        pio: Arc<SharedBus>,
        mmio: Arc<SharedBus>,
    }

    /// The tests' windows: MMIO 0xd000_0000-0xefff_ffff, I/O 0xc000-0xffff.
    pub(super) fn windows() -> BarWindows {
        use crate::pci::bar::Window;
        BarWindows {
            mmio32: Some(Window {
                base: 0xd000_0000,
                size: 0x2000_0000,
            }),
            mmio64: None,
            io: Some(Window {
                base: 0xc000,
                size: 0x4000,
            }),
        }
    }

    fn ops() -> Fixture {
        let vm = Arc::new(crate::vfio::testing::kvm_vm());
        let (pio, mmio) = (Arc::new(SharedBus::new()), Arc::new(SharedBus::new()));
        let o = KvmVmOps::new(
            vm,
            Arc::new(SlotPool::new(100, 102)),
            &pio,
            &mmio,
            windows(),
        );
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Ones));
        o.set_device(&dev);
        Fixture {
            o,
            _dev: dev,
            pio,
            mmio,
        }
    }

    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn memslots_on_a_real_vm_are_added_removed_and_reused() {
        let Fixture { o, _dev, pio, mmio } = ops();
        let _buses = (pio, mmio);
        o.register_trap(AddressSpace::Mmio, 0xd000_0000, 0x4000)
            .unwrap();
        let f = tempfile::tempfile().unwrap();
        f.set_len(0x2000).unwrap();
        let area = crate::vfio::device_fd::MmapArea {
            offset: 0,
            size: 0x2000,
        };
        use std::os::unix::io::AsRawFd;
        let m =
            crate::vfio::device::bar_mmap::MappedArea::map(f.as_raw_fd(), 0, area, true).unwrap();
        let s1 = o.add_memslot(0xd000_0000, 0x1000, m.host_addr()).unwrap();
        let s2 = o
            .add_memslot(0xd000_1000, 0x1000, m.host_addr() + 0x1000)
            .unwrap();
        assert!(matches!(
            o.add_memslot(0xd000_2000, 0x1000, m.host_addr()),
            Err(VmOpsError::Exhausted(_))
        ));
        o.remove_memslot(s1).unwrap();
        assert!(o.remove_memslot(s1).is_err(), "twice");
        let s3 = o.add_memslot(0xd000_0000, 0x1000, m.host_addr()).unwrap();
        assert_eq!(s3, s1, "freed slot reused");
        o.remove_memslot(s2).unwrap();
        o.remove_memslot(s3).unwrap();
    }

    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn ranges_are_placed_at_once_inside_the_windows_and_removed_only_by_their_owner() {
        let Fixture { o, _dev, pio, mmio } = ops();
        let vmm: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Ones));
        mmio.insert(Owner::VMM, vmm.clone(), 0xe000_0000, 0x1000)
            .unwrap();
        pio.insert(Owner::VMM, vmm, 0x3f8, 8).unwrap();
        o.insert_traps(&[(AddressSpace::Mmio, 0xd000_0000, 0x1000)])
            .unwrap();
        // A move made from inside an access (the bus is in use) takes effect at once.
        let snapshot = mmio.snapshot();
        o.unregister_trap(AddressSpace::Mmio, 0xd000_0000).unwrap();
        o.register_trap(AddressSpace::Mmio, 0xd100_0000, 0x1000)
            .unwrap();
        let mut b = [0u8; 1];
        assert!(!mmio.read(0xd000_0000, &mut b));
        assert!(mmio.read(0xd100_0000, &mut b));
        assert_eq!(b, [1]);
        drop(snapshot);
        // Over the VMM's range, or outside the windows (RAM, the UART, the LAPIC):
        // refused, and nothing is recorded.
        for (space, base, len) in [
            (AddressSpace::Mmio, 0xe000_0000, 0x1000),
            (AddressSpace::Mmio, 0x10_0000, 0x1000),
            (AddressSpace::Mmio, 0xfee0_0000, 0x1000),
            (AddressSpace::Mmio, 0xefff_f000, 0x2000),
            (AddressSpace::Pio, 0x3f8, 8),
        ] {
            let e = o.register_trap(space, base, len).unwrap_err();
            assert!(matches!(e, VmOpsError::Refused(_)), "{base:#x}: {e}");
        }
        assert_eq!(mmio.owner_at(0xe000_0000), Some(Owner::VMM));
        // A stale address cannot take the VMM's range or the UART down.
        assert!(o.unregister_trap(AddressSpace::Mmio, 0xe000_0000).is_err());
        assert!(o.unregister_trap(AddressSpace::Pio, 0x3f8).is_err());
        assert_eq!(mmio.owner_at(0xe000_0000), Some(Owner::VMM));
        assert_eq!(pio.owner_at(0x3f8), Some(Owner::VMM));
        // Slots only inside the device's own placed memory ranges.
        let e = o.add_memslot(0xe000_0000, 0x1000, 0x1000).unwrap_err();
        assert!(matches!(e, VmOpsError::Refused(_)), "{e}");
        let e = o.add_memslot(0xd100_0000, 0x2000, 0x1000).unwrap_err();
        assert!(
            matches!(e, VmOpsError::Refused(_)),
            "runs past the BAR: {e}"
        );
        o.register_trap(AddressSpace::Pio, 0xc000, 0x20).unwrap();
        assert!(pio.read(0xc010, &mut b));
        assert_eq!(o.remove_all_traps(), 2);
        assert!(!pio.read(0xc010, &mut b));
        assert_eq!(pio.owner_at(0x3f8), Some(Owner::VMM), "the UART stays");
    }
}

#[cfg(test)]
mod cycle_tests {
    use super::*;

    struct Nop;
    impl BusDevice for Nop {
        fn read(&mut self, _b: u64, _o: u64, _d: &mut [u8]) {}
        fn write(&mut self, _b: u64, _o: u64, _d: &[u8]) {}
    }

    /// The buses own the device and the device owns its VmOps: the VmOps must not own
    /// the buses back, or nothing would ever be dropped (and no device reset at exit).
    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn vm_ops_do_not_keep_the_buses_alive() {
        let vm = Arc::new(crate::vfio::testing::kvm_vm());
        let (pio, mmio) = (Arc::new(SharedBus::new()), Arc::new(SharedBus::new()));
        let o = KvmVmOps::new(
            vm,
            Arc::new(SlotPool::new(1, 2)),
            &pio,
            &mmio,
            super::tests::windows(),
        );
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Nop));
        o.set_device(&dev);
        assert_eq!(Arc::strong_count(&pio), 1);
        drop((pio, mmio));
        let e = o.register_trap(AddressSpace::Pio, 0xc000, 8).unwrap_err();
        assert!(e.to_string().contains("shutting down"), "{e}");
    }
}

#[cfg(test)]
mod glue_tests {
    use super::*;
    use crate::pci::bar::{BarAllocator, Window, DEFAULT_MMIO64_LIMIT};
    use crate::pci::PciDevice;
    use crate::vfio::device::{DeviceContext, VfioPciDevice};
    use crate::vfio::device_fd::{IrqIndex, IrqInfo, RegionInfo};
    use crate::vfio::testing::{FakeDevice, RecordingVm};

    /// The glue of docs/passthrough.md §8 on a real KVM VM: slots of mmapped BAR memory,
    /// traps on real buses reaching the device, decode toggling.
    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn a_device_wired_like_the_vmm_does_it() {
        let vm = Arc::new(crate::vfio::testing::kvm_vm());
        let mut cfg = vec![0u8; 256];
        cfg[0..4].copy_from_slice(&0x1234_1af4u32.to_le_bytes());
        cfg[0x14..0x18].copy_from_slice(&1u32.to_le_bytes()); // BAR1: I/O
        cfg[0x3d] = 1;
        let mut f = FakeDevice::new(cfg);
        let r = |size, flags, offset| RegionInfo {
            flags,
            size,
            offset,
            ..Default::default()
        };
        f.add_region(0, r(0x2000, 0x7, 0), vec![0x42; 0x2000]);
        f.add_region(1, r(0x8, 0x3, 0x2000), vec![0x17; 0x8]);
        f.irqs
            .insert(IrqIndex::Intx, IrqInfo { flags: 7, count: 1 });
        let (pio, mmio) = (Arc::new(SharedBus::new()), Arc::new(SharedBus::new()));
        let routing = Arc::new(RecordingVm::new());
        let mut alloc = BarAllocator::new(
            Some(Window {
                base: 0xe000_0000,
                size: 0x100_0000,
            }),
            None,
            Some(Window {
                base: 0xc000,
                size: 0x1000,
            }),
            DEFAULT_MMIO64_LIMIT,
        );
        let ops = Arc::new(KvmVmOps::new(
            vm,
            Arc::new(SlotPool::new(10, 20)),
            &pio,
            &mmio,
            alloc.windows(),
        ));
        let ctx = DeviceContext {
            rom: crate::vfio::device::RomImage::FromDevice,
            multifunction: false,
            vm: ops.clone(),
            routing,
            bars: &mut alloc,
            intx_gsi: Some(11),
            dma: None,
        };
        let dev = VfioPciDevice::new("glue", Arc::new(f), ctx).unwrap();
        let ranges = dev.trapped_ranges();
        let dev = Arc::new(Mutex::new(dev));
        ops.set_device(&(dev.clone() as Arc<Mutex<dyn BusDevice>>));
        ops.insert_traps(&ranges).unwrap();

        let mut b = [0u8; 4];
        assert!(pio.read(0xc000, &mut b[..1]), "I/O BAR trap registered");
        assert_eq!(b[0], 0xff, "I/O decode still off");
        dev.lock().unwrap().write_config_register(1, 0, &[0x03]);
        assert!(pio.read(0xc004, &mut b));
        assert_eq!(b, [0x17; 4], "through the bus into VFIO region 1");
        assert_eq!(ops.live.lock().unwrap().len(), 1, "BAR0 is a KVM slot");
        assert_eq!(
            ops.live.lock().unwrap().values().next().unwrap().0,
            0xe000_0000
        );
        dev.lock().unwrap().write_config_register(1, 0, &[0x01]);
        assert!(
            ops.live.lock().unwrap().is_empty(),
            "memory decode off: slot removed"
        );
        drop(dev);
    }
}
