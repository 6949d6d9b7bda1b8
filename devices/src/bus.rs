//! Port-I/O and MMIO buses: non-overlapping address ranges, each routed to one device.
//!
//! A vCPU exit hands `(addr, data)` to [`Bus::read`] / [`Bus::write`]; the bus finds the
//! range holding `addr` and calls the device with the offset inside that range. Every
//! lookup is bounds-checked, so a guest access to an unclaimed address is simply ignored
//! (reads return all-ones, as on real hardware).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
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

    /// Routes `[base, base + len)` to `device`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
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
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the range starting at `base`, returning its device.
    pub fn remove(&mut self, base: u64) -> Result<SharedDevice, BusError> {
        self.ranges
            .remove(&base)
            .map(|e| e.device)
            .ok_or(BusError::NotFound(base))
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
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(dev.lock().unwrap().last, Some((0x3f8, 1, vec![7])));
    }

    #[test]
    fn unclaimed_and_straddling_accesses_are_ignored() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10)
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
        bus.insert(d(), 0x100, 0x100).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x1ff, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0x80, 0x81),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(d(), 0x200, 1).is_ok());
        assert!(bus.insert(d(), 0x80, 0x80).is_ok());
        assert!(matches!(
            bus.insert(d(), 0x1000, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(bus.remove(0x100).is_ok());
        assert_eq!(bus.remove(0x100).err(), Some(BusError::NotFound(0x100)));
    }
}
