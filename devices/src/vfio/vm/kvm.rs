//! A ready [`VmOps`] for a KVM VM with `Arc<RwLock<Bus>>` buses, one per device.
//!
//! Memory slots come from a pool shared by every device (above the slots the VMM uses for
//! RAM). Bus changes are made at once when the bus lock is free, and queued otherwise:
//! the device asks for them from inside a guest config write, when the vCPU thread may be
//! holding the port-I/O bus for reading (and another vCPU the MMIO bus), so blocking there
//! would deadlock. The VMM applies the queue with [`KvmVmOps::apply_pending`] when
//! [`KvmVmOps::pending_event`] fires (from its event loop, holding no device lock).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock, TryLockError, Weak};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{AddressSpace, VmOps, VmOpsError};
use crate::bus::{Bus, BusDevice};

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

enum TrapOp {
    Add(AddressSpace, u64, u64),
    Remove(AddressSpace, u64),
}

/// [`VmOps`] over a KVM VM and the VMM's two buses, for one device.
pub struct KvmVmOps {
    vm: Arc<VmFd>,
    slots: Arc<SlotPool>,
    live: Mutex<BTreeMap<u32, (u64, u64, u64)>>,
    // Weak: the buses own the device, which owns these services.
    pio: Weak<RwLock<Bus>>,
    mmio: Weak<RwLock<Bus>>,
    device: OnceLock<Weak<Mutex<dyn BusDevice>>>,
    pending: Mutex<Vec<TrapOp>>,
    event: EventFd,
}

impl KvmVmOps {
    /// Services for one device; call [`KvmVmOps::set_device`] once the device exists.
    pub fn new(
        vm: Arc<VmFd>,
        slots: Arc<SlotPool>,
        pio: Arc<RwLock<Bus>>,
        mmio: Arc<RwLock<Bus>>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            vm,
            slots,
            live: Mutex::new(BTreeMap::new()),
            pio: Arc::downgrade(&pio),
            mmio: Arc::downgrade(&mmio),
            device: OnceLock::new(),
            pending: Mutex::new(Vec::new()),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The device the buses route trapped ranges to (held weakly: the device owns us).
    pub fn set_device(&self, device: &Arc<Mutex<dyn BusDevice>>) {
        let _ = self.device.set(Arc::downgrade(device));
    }

    /// Inserts the device's initial trapped ranges (call at setup, no lock held).
    pub fn insert_traps(&self, ranges: &[(AddressSpace, u64, u64)]) -> Result<(), VmOpsError> {
        for &(space, base, len) in ranges {
            let dev = self.device()?;
            let bus = self.bus(space)?;
            let mut bus = bus.write().unwrap_or_else(|p| p.into_inner());
            bus.insert(dev, base, len)
                .map_err(|e| VmOpsError::Other(e.to_string()))?;
        }
        Ok(())
    }

    /// Signalled when bus changes wait in the queue.
    pub fn pending_event(&self) -> &EventFd {
        &self.event
    }

    /// Applies queued bus changes (blocking on the bus locks; hold no device lock).
    pub fn apply_pending(&self) {
        let _ = self.event.read();
        let ops = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for op in ops {
            let r = match op {
                TrapOp::Add(space, base, len) => self.device().and_then(|d| {
                    let bus = self.bus(space)?;
                    let mut bus = bus.write().unwrap_or_else(|p| p.into_inner());
                    bus.insert(d, base, len)
                        .map_err(|e| VmOpsError::Other(e.to_string()))
                }),
                TrapOp::Remove(space, base) => self.bus(space).and_then(|bus| {
                    let mut bus = bus.write().unwrap_or_else(|p| p.into_inner());
                    bus.remove(base)
                        .map(|_| ())
                        .map_err(|e| VmOpsError::Other(e.to_string()))
                }),
            };
            if let Err(e) = r {
                log::warn!("VFIO: moving a BAR trap: {e}");
            }
        }
    }

    fn bus(&self, space: AddressSpace) -> Result<Arc<RwLock<Bus>>, VmOpsError> {
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

    fn queue(&self, op: TrapOp) -> Result<(), VmOpsError> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(op);
        self.event
            .write(1)
            .map_err(|e| VmOpsError::Other(e.to_string()))
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

impl VmOps for KvmVmOps {
    fn add_memslot(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, VmOpsError> {
        let slot = self
            .slots
            .take()
            .ok_or(VmOpsError::Exhausted("KVM memory slots"))?;
        if let Err(e) = self.set_region(slot, gpa, size, host_addr) {
            self.slots.give(slot);
            return Err(e);
        }
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot, (gpa, size, host_addr));
        Ok(slot)
    }

    fn remove_memslot(&self, slot: u32) -> Result<(), VmOpsError> {
        let Some((gpa, _, host)) = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot)
        else {
            return Err(VmOpsError::Other(format!("memory slot {slot} is not ours")));
        };
        self.set_region(slot, gpa, 0, host)?;
        self.slots.give(slot);
        Ok(())
    }

    fn register_trap(&self, space: AddressSpace, base: u64, len: u64) -> Result<(), VmOpsError> {
        let dev = self.device()?;
        let bus = self.bus(space)?;
        let r = match bus.try_write() {
            Ok(mut bus) => bus
                .insert(dev, base, len)
                .map_err(|e| VmOpsError::Other(e.to_string())),
            Err(TryLockError::WouldBlock) => self.queue(TrapOp::Add(space, base, len)),
            Err(TryLockError::Poisoned(p)) => p
                .into_inner()
                .insert(dev, base, len)
                .map_err(|e| VmOpsError::Other(e.to_string())),
        };
        r
    }

    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError> {
        let bus = self.bus(space)?;
        let r = match bus.try_write() {
            Ok(mut bus) => bus
                .remove(base)
                .map(|_| ())
                .map_err(|e| VmOpsError::Other(e.to_string())),
            Err(TryLockError::WouldBlock) => self.queue(TrapOp::Remove(space, base)),
            Err(TryLockError::Poisoned(p)) => p
                .into_inner()
                .remove(base)
                .map(|_| ())
                .map_err(|e| VmOpsError::Other(e.to_string())),
        };
        r
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
        pio: Arc<RwLock<Bus>>,
        mmio: Arc<RwLock<Bus>>,
    }

    fn ops() -> Fixture {
        let vm = Arc::new(crate::vfio::testing::kvm_vm());
        let (pio, mmio) = (
            Arc::new(RwLock::new(Bus::new())),
            Arc::new(RwLock::new(Bus::new())),
        );
        let o = KvmVmOps::new(
            vm,
            Arc::new(SlotPool::new(100, 102)),
            pio.clone(),
            mmio.clone(),
        )
        .unwrap();
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
        let Fixture { o, .. } = ops();
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
    fn trap_changes_are_queued_while_the_bus_is_read_locked() {
        let Fixture { o, _dev, pio, mmio } = ops();
        o.insert_traps(&[(AddressSpace::Mmio, 0xd000_0000, 0x1000)])
            .unwrap();
        {
            let _reader = mmio.read().unwrap(); // a vCPU dispatching an MMIO exit
            o.unregister_trap(AddressSpace::Mmio, 0xd000_0000).unwrap();
            o.register_trap(AddressSpace::Mmio, 0xe000_0000, 0x1000)
                .unwrap();
            assert_eq!(o.pending_event().read().unwrap(), 2);
            o.pending_event().write(1).unwrap();
        }
        let mut b = [0u8; 1];
        assert!(
            mmio.read().unwrap().read(0xd000_0000, &mut b),
            "not yet moved"
        );
        o.apply_pending();
        assert!(!mmio.read().unwrap().read(0xd000_0000, &mut b));
        assert!(mmio.read().unwrap().read(0xe000_0000, &mut b));
        assert_eq!(b, [1]);
        // Without a reader the change is immediate.
        o.register_trap(AddressSpace::Pio, 0xc000, 0x20).unwrap();
        assert!(pio.read().unwrap().read(0xc010, &mut b));
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
        let (pio, mmio) = (
            Arc::new(RwLock::new(Bus::new())),
            Arc::new(RwLock::new(Bus::new())),
        );
        let o =
            KvmVmOps::new(vm, Arc::new(SlotPool::new(1, 2)), pio.clone(), mmio.clone()).unwrap();
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
        let (pio, mmio) = (
            Arc::new(RwLock::new(Bus::new())),
            Arc::new(RwLock::new(Bus::new())),
        );
        let ops = Arc::new(
            KvmVmOps::new(
                vm,
                Arc::new(SlotPool::new(10, 20)),
                pio.clone(),
                mmio.clone(),
            )
            .unwrap(),
        );
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
        assert!(
            pio.read().unwrap().read(0xc000, &mut b[..1]),
            "I/O BAR trap registered"
        );
        assert_eq!(b[0], 0xff, "I/O decode still off");
        dev.lock().unwrap().write_config_register(1, 0, &[0x03]);
        assert!(pio.read().unwrap().read(0xc004, &mut b));
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
