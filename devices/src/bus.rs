//! Port-I/O and MMIO buses: non-overlapping address ranges, each routed to one device
//! and owned by one party.
//!
//! A vCPU exit hands `(addr, data)` to [`Bus::read`] / [`Bus::write`]; the bus finds the
//! range holding `addr` and calls the device with the offset inside that range. Every
//! lookup is bounds-checked, so a guest access to an unclaimed address is simply ignored
//! (reads return all-ones, as on real hardware).
//!
//! Every range has an [`Owner`], and only its owner removes it: a passthrough device
//! whose guest moves a BAR can take down its own trap, never the VMM's ports or another
//! device's BAR that happens to start at the same address.
//!
//! The VM's threads share a bus as a [`SharedBus`]: a dispatch works on a snapshot and
//! holds no lock while the device runs, so a device may change the bus from inside a
//! guest access (a BAR write moves its trap) and the change is made at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device that sits on a [`Bus`].
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset` from the start of the range at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` from the start of the range at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from inserting or removing bus ranges.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps past the end of the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing range")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No range starts at this address.
    #[error("no bus range starts at {0:#x}")]
    NotFound(u64),
    /// The range starting at this address belongs to someone else.
    #[error("the bus range at {0:#x} belongs to another device")]
    NotOwner(u64),
}

/// Who put a range on a bus: the VMM's own devices, or one passthrough device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(u64);

impl Owner {
    /// The VMM's platform devices (the UART, the i8042, the PCI config ports, ECAM).
    pub const VMM: Owner = Owner(0);

    /// A new owner, different from every other in this process.
    pub fn unique() -> Owner {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Owner(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    owner: Owner,
    device: SharedDevice,
}

/// An address space (PIO or MMIO) of non-overlapping ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `[base, base + len)` to `device`, on behalf of `owner`.
    pub fn insert(
        &mut self,
        owner: Owner,
        device: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::InvalidRange { base, len }),
        };
        let overlaps_prev = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, e)| b + e.len > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, owner, device });
        Ok(())
    }

    /// Removes `owner`'s range starting at `base`, returning its device.
    pub fn remove(&mut self, owner: Owner, base: u64) -> Result<SharedDevice, BusError> {
        match self.ranges.get(&base) {
            None => Err(BusError::NotFound(base)),
            Some(e) if e.owner != owner => Err(BusError::NotOwner(base)),
            Some(_) => self
                .ranges
                .remove(&base)
                .map(|e| e.device)
                .ok_or(BusError::NotFound(base)),
        }
    }

    /// Removes every range of `owner` (a device leaving the VM); returns how many.
    pub fn remove_owner(&mut self, owner: Owner) -> usize {
        let before = self.ranges.len();
        self.ranges.retain(|_, e| e.owner != owner);
        before - self.ranges.len()
    }

    /// The owner of the range holding `addr`.
    pub fn owner_at(&self, addr: u64) -> Option<Owner> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        (addr - base < entry.len).then_some(entry.owner)
    }

    /// The range holding `addr` as `(base, offset, device)`, if the access of `len` bytes fits in it.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, u64, &SharedDevice)> {
        let (base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let last = offset.checked_add(len as u64)?;
        (last <= entry.len).then_some((*base, offset, &entry.device))
    }

    /// Dispatches a guest read. Returns false (and fills `data` with 0xff) when nothing claims it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, offset, dev)) => {
                lock(dev).read(base, offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a guest write. Returns false when nothing claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, offset, dev)) => {
                lock(dev).write(base, offset, data);
                true
            }
            None => false,
        }
    }
}

/// A [`Bus`] shared by the VM's threads. Dispatches read a snapshot (an `Arc` taken under
/// a lock held only for the clone), so no lock is held while a device handles an access;
/// changes copy the map and publish the copy. A BAR move from inside a guest's config
/// write therefore takes effect at once, with its result known to the device, instead
/// of waiting in a queue for a lock its own vCPU holds.
#[derive(Default)]
pub struct SharedBus {
    current: RwLock<Arc<Bus>>,
}

impl SharedBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bus as it is now; later changes do not affect it.
    pub fn snapshot(&self) -> Arc<Bus> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Dispatches a guest read ([`Bus::read`]).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.snapshot().read(addr, data)
    }

    /// Dispatches a guest write ([`Bus::write`]).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.snapshot().write(addr, data)
    }

    /// Applies `change` to a copy of the bus and publishes the copy (when it succeeds).
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Bus) -> Result<T, BusError>,
    ) -> Result<T, BusError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut next = Bus::clone(&current);
        let r = change(&mut next)?;
        *current = Arc::new(next);
        Ok(r)
    }

    /// [`Bus::insert`].
    pub fn insert(
        &self,
        owner: Owner,
        device: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        self.update(|b| b.insert(owner, device, base, len))
    }

    /// [`Bus::remove`].
    pub fn remove(&self, owner: Owner, base: u64) -> Result<SharedDevice, BusError> {
        self.update(|b| b.remove(owner, base))
    }

    /// [`Bus::remove_owner`].
    pub fn remove_owner(&self, owner: Owner) -> usize {
        self.update(|b| Ok(b.remove_owner(owner))).unwrap_or(0)
    }

    /// [`Bus::owner_at`].
    pub fn owner_at(&self, addr: u64) -> Option<Owner> {
        self.snapshot().owner_at(addr)
    }
}

/// Locks a device, recovering from a poisoned lock: a device whose earlier access
/// panicked on another vCPU thread keeps serving rather than taking the VM down twice.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }
    impl BusDevice for Recorder {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(Owner::VMM, dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().last, Some((0x3f8, 1, vec![7])));
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_ignored() {
        let mut bus = Bus::new();
        bus.insert(
            Owner::VMM,
            Arc::new(Mutex::new(Recorder::default())),
            0x1000,
            0x10,
        )
        .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x0fff, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.read(0x100e, &mut b), "access crossing the end");
        assert!(!bus.write(u64::MAX, &[1, 2]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(Owner::VMM, d(), 0x100, 0x100).unwrap();
        assert!(matches!(
            bus.insert(Owner::VMM, d(), 0x1ff, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(Owner::VMM, d(), 0x80, 0x81),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(Owner::VMM, d(), 0x200, 1).is_ok());
        assert!(bus.insert(Owner::VMM, d(), 0x80, 0x80).is_ok());
        assert!(matches!(
            bus.insert(Owner::VMM, d(), 0x1000, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(Owner::VMM, d(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(bus.remove(Owner::VMM, 0x100).is_ok());
        assert_eq!(
            bus.remove(Owner::VMM, 0x100).err(),
            Some(BusError::NotFound(0x100))
        );
    }

    #[test]
    fn only_the_owner_removes_a_range() {
        let mut bus = Bus::new();
        let (a, b) = (Owner::unique(), Owner::unique());
        assert_ne!(a, b);
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(Owner::VMM, d(), 0x3f8, 8).unwrap();
        bus.insert(a, d(), 0x1000, 0x100).unwrap();
        bus.insert(a, d(), 0x2000, 0x100).unwrap();
        bus.insert(b, d(), 0x3000, 0x100).unwrap();
        // A device whose record is stale (it thinks its BAR sits on the UART) cannot
        // unplug the UART, nor another device's range.
        assert_eq!(bus.remove(a, 0x3f8).err(), Some(BusError::NotOwner(0x3f8)));
        assert_eq!(
            bus.remove(a, 0x3000).err(),
            Some(BusError::NotOwner(0x3000))
        );
        assert_eq!(bus.owner_at(0x3ff), Some(Owner::VMM));
        assert_eq!(bus.owner_at(0x400), None);
        assert_eq!(bus.owner_at(0x30ff), Some(b));
        assert_eq!(bus.remove_owner(a), 2);
        assert_eq!(bus.owner_at(0x1000), None);
        assert_eq!(bus.owner_at(0x3000), Some(b));
        assert!(bus.remove(b, 0x3000).is_ok());
    }

    /// A device that moves its own range from inside a guest access, as a BAR write does.
    struct Mover {
        bus: std::sync::Weak<SharedBus>,
        me: std::sync::Weak<Mutex<Mover>>,
        owner: Owner,
    }
    impl BusDevice for Mover {
        fn read(&mut self, base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(base as u8);
        }
        fn write(&mut self, base: u64, _offset: u64, data: &[u8]) {
            let (Some(bus), Some(me)) = (self.bus.upgrade(), self.me.upgrade()) else {
                return;
            };
            let to = u64::from(data[0]) << 8;
            bus.remove(self.owner, base).unwrap();
            bus.insert(self.owner, me, to, 0x10).unwrap();
        }
    }

    #[test]
    fn a_device_changes_a_shared_bus_from_inside_an_access() {
        let bus = Arc::new(SharedBus::new());
        let owner = Owner::unique();
        let dev = Arc::new_cyclic(|me| {
            Mutex::new(Mover {
                bus: Arc::downgrade(&bus),
                me: me.clone(),
                owner,
            })
        });
        bus.insert(owner, dev, 0x100, 0x10).unwrap();
        let before = bus.snapshot();
        // Moves itself to 0x500 while the dispatch is still in its write.
        assert!(bus.write(0x104, &[5]));
        let mut b = [0u8; 1];
        assert!(!bus.read(0x100, &mut b), "the old range is gone at once");
        assert!(bus.read(0x504, &mut b));
        assert_eq!(b[0], 0x00, "base 0x500 as u8");
        assert!(before.read(0x100, &mut b), "a snapshot keeps what it saw");
        assert_eq!(bus.owner_at(0x500), Some(owner));
    }
}
