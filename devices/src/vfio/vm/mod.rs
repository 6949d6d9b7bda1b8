//! What a passed-through device asks of the VM besides interrupts: memory slots for its
//! mmapped BAR areas, and bus ranges for the trapped parts of its BARs.
//!
//! Interrupts (GSIs, MSI routes, irqfds) go through [`crate::pci::InterruptRouting`], whose
//! one implementation owns the GSI routing table. The device model keeps the ordering
//! rules (route before irqfd, irqfd off before route removal) itself.
//!
//! Every call may come from inside a guest config-space write, with the device's own lock
//! held: an implementation must not lock the device. Its answers are final: a range it
//! accepts is placed, one it refuses is not (the device then leaves that BAR unmapped).
//!
//! [`kvm`] is the implementation the VMM uses.

pub mod kvm;

/// A guest address space a BAR can live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressSpace {
    /// x86 I/O ports.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// A VM-side operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmOpsError {
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The operation, e.g. "register irqfd".
        op: &'static str,
        /// The errno.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// No memory slot is left.
    #[error("out of {0}: the VM has too many devices or BAR areas")]
    Exhausted(&'static str),
    /// The VM does not let the device have this range (outside the BAR windows, over
    /// another device or the VMM's own, outside the device's placed BARs).
    #[error("refused: {0}")]
    Refused(String),
    /// Anything else the VMM reports.
    #[error("{0}")]
    Other(String),
}

/// The VMM services (besides interrupts) a VFIO device model uses.
pub trait VmOps: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` into the guest at `gpa`; returns the slot.
    fn add_memslot(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, VmOpsError>;
    /// Removes a slot returned by [`VmOps::add_memslot`].
    fn remove_memslot(&self, slot: u32) -> Result<(), VmOpsError>;
    /// Routes guest accesses to `[base, base + len)` in `space` to this device's
    /// `BusDevice`. The device calls it when decoding turns on or a decoding BAR moves.
    fn register_trap(&self, space: AddressSpace, base: u64, len: u64) -> Result<(), VmOpsError>;
    /// Undoes [`VmOps::register_trap`] for the range starting at `base`.
    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError>;
}
