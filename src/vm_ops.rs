//! The VM services a passed-through device uses besides interrupts
//! ([`devices::vfio::vm::VmOps`]): memory slots for its mmapped BAR areas and bus ranges
//! for the trapped parts of its BARs.
//!
//! Bus changes are deferred. They are requested from inside a guest config-space write,
//! which a vCPU dispatches while holding the port bus's read lock (config mechanism #1 is
//! port I/O) and the device's lock; taking a bus write lock there would deadlock. So
//! [`DeviceVmOps::register_trap`] queues the change in [`BusUpdates`], and the vCPU applies
//! the queue right after the exit that caused it, before it re-enters the guest (the main
//! thread applies it once before the vCPUs start). The guest cannot observe the delay: the
//! BAR write that moved the range is not complete, from its side, until that exit returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use devices::bus::SharedDevice;
use devices::vfio::vm::{AddressSpace, VmOps, VmOpsError};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use crate::vcpu::Buses;

enum BusUpdate {
    Insert {
        space: AddressSpace,
        base: u64,
        len: u64,
        device: SharedDevice,
    },
    Remove {
        space: AddressSpace,
        base: u64,
    },
}

/// Bus changes waiting for the end of the current exit.
#[derive(Default)]
pub struct BusUpdates {
    queued: Mutex<Vec<BusUpdate>>,
    dirty: AtomicBool,
}

impl BusUpdates {
    fn push(&self, u: BusUpdate) {
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(u);
        self.dirty.store(true, Ordering::Release);
    }

    /// Applies the queued changes in order (cheap when there are none: one atomic load).
    pub fn apply(&self, buses: &Buses) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let updates = std::mem::take(&mut *self.queued.lock().unwrap_or_else(|p| p.into_inner()));
        for u in updates {
            let (space, result) = match u {
                BusUpdate::Insert {
                    space,
                    base,
                    len,
                    device,
                } => (space, bus(buses, space).insert(device, base, len).map(drop)),
                BusUpdate::Remove { space, base } => {
                    (space, bus(buses, space).remove(base).map(drop))
                }
            };
            // The device checked its ranges; a failure here is a device-model bug, and the
            // guest just sees an unclaimed range.
            if let Err(e) = result {
                log::error!("{space:?} bus update failed: {e}");
            }
        }
    }
}

fn bus(buses: &Buses, space: AddressSpace) -> std::sync::RwLockWriteGuard<'_, devices::bus::Bus> {
    let b = match space {
        AddressSpace::Pio => &buses.pio,
        AddressSpace::Mmio => &buses.mmio,
    };
    b.write().unwrap_or_else(|p| p.into_inner())
}

/// KVM memory slot numbers, shared by every device of a VM.
pub struct Memslots {
    free: Mutex<Vec<u32>>,
    next: Mutex<u32>,
    limit: u32,
}

impl Memslots {
    /// Slots from `first` (the ones below hold guest RAM) up to `limit` (KVM's count).
    pub fn new(first: u32, limit: u32) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            next: Mutex::new(first),
            limit,
        }
    }

    fn take(&self) -> Result<u32, VmOpsError> {
        if let Some(s) = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if *next >= self.limit {
            return Err(VmOpsError::Exhausted("KVM memory slots"));
        }
        *next += 1;
        Ok(*next - 1)
    }

    fn give_back(&self, slot: u32) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
    }
}

/// [`VmOps`] for one device: its traps route to the device given to [`DeviceVmOps::attach`].
pub struct DeviceVmOps {
    vm: Arc<VmFd>,
    slots: Arc<Memslots>,
    updates: Arc<BusUpdates>,
    device: OnceLock<SharedDevice>,
}

impl DeviceVmOps {
    /// Services on `vm` whose bus changes go through `updates`.
    pub fn new(vm: Arc<VmFd>, slots: Arc<Memslots>, updates: Arc<BusUpdates>) -> Self {
        Self {
            vm,
            slots,
            updates,
            device: OnceLock::new(),
        }
    }

    /// The device the traps route to (set once, after the device exists).
    pub fn attach(&self, device: SharedDevice) -> Result<(), VmOpsError> {
        self.device
            .set(device)
            .map_err(|_| VmOpsError::Other("DeviceVmOps is already attached to a device".into()))
    }

    fn set_region(&self, slot: u32, gpa: u64, size: u64, host_addr: u64) -> Result<(), VmOpsError> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller (the device model) owns the mapping at `host_addr` and removes the
        // slot before unmapping it, as the VmOps contract requires; size 0 deletes the slot.
        unsafe { self.vm.set_user_memory_region(r) }.map_err(|source| VmOpsError::Kvm {
            op: "KVM_SET_USER_MEMORY_REGION",
            source,
        })
    }
}

impl VmOps for DeviceVmOps {
    fn add_memslot(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, VmOpsError> {
        let slot = self.slots.take()?;
        if let Err(e) = self.set_region(slot, gpa, size, host_addr) {
            self.slots.give_back(slot);
            return Err(e);
        }
        Ok(slot)
    }

    fn remove_memslot(&self, slot: u32) -> Result<(), VmOpsError> {
        self.set_region(slot, 0, 0, 0)?;
        self.slots.give_back(slot);
        Ok(())
    }

    fn register_trap(&self, space: AddressSpace, base: u64, len: u64) -> Result<(), VmOpsError> {
        let device = self.device.get().ok_or_else(|| {
            VmOpsError::Other("register_trap before the device was attached".into())
        })?;
        self.updates.push(BusUpdate::Insert {
            space,
            base,
            len,
            device: device.clone(),
        });
        Ok(())
    }

    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError> {
        self.updates.push(BusUpdate::Remove { space, base });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;

    struct Fixed(u8);
    impl BusDevice for Fixed {
        fn read(&mut self, _b: u64, _o: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _b: u64, _o: u64, _d: &[u8]) {}
    }

    fn buses() -> Buses {
        Buses::default()
    }

    #[test]
    fn traps_apply_after_the_exit_in_order() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no usable /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let updates = Arc::new(BusUpdates::default());
        let ops = DeviceVmOps::new(vm, Arc::new(Memslots::new(2, 8)), updates.clone());
        assert!(
            ops.register_trap(AddressSpace::Pio, 0xc000, 0x20).is_err(),
            "not attached"
        );
        ops.attach(Arc::new(Mutex::new(Fixed(0x5a)))).unwrap();
        let b = buses();

        // A config write on a vCPU holding the port bus's read lock must not deadlock.
        {
            let _held = b.pio.read().unwrap();
            ops.register_trap(AddressSpace::Pio, 0xc000, 0x20).unwrap();
            ops.register_trap(AddressSpace::Mmio, 0xe000_0000, 0x1000)
                .unwrap();
        }
        let mut v = [0u8; 1];
        assert!(
            !b.pio.read().unwrap().read(0xc004, &mut v),
            "nothing before the exit ends"
        );
        updates.apply(&b);
        assert!(b.pio.read().unwrap().read(0xc004, &mut v));
        assert_eq!(v[0], 0x5a);
        assert!(b.mmio.read().unwrap().read(0xe000_0010, &mut v));

        // Moving a BAR: remove then insert, applied in that order.
        ops.unregister_trap(AddressSpace::Mmio, 0xe000_0000)
            .unwrap();
        ops.register_trap(AddressSpace::Mmio, 0xe010_0000, 0x1000)
            .unwrap();
        updates.apply(&b);
        assert!(!b.mmio.read().unwrap().read(0xe000_0010, &mut v));
        assert!(b.mmio.read().unwrap().read(0xe010_0010, &mut v));
    }

    #[test]
    fn memslots_are_numbered_after_ram_and_reused() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: no usable /dev/kvm");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let ops = DeviceVmOps::new(vm, Arc::new(Memslots::new(2, 4)), Arc::default());
        let map = |len: usize| {
            // SAFETY: a fresh anonymous mapping, leaked for the test's duration.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            p as u64
        };
        let a = ops.add_memslot(0xe000_0000, 0x1000, map(0x1000)).unwrap();
        let b = ops.add_memslot(0xe000_1000, 0x1000, map(0x1000)).unwrap();
        assert_eq!((a, b), (2, 3));
        assert!(matches!(
            ops.add_memslot(0xe000_2000, 0x1000, map(0x1000)),
            Err(VmOpsError::Exhausted(_))
        ));
        ops.remove_memslot(a).unwrap();
        assert_eq!(
            ops.add_memslot(0xe000_2000, 0x1000, map(0x1000)).unwrap(),
            2
        );
    }
}
