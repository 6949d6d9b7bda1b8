//! What a passed-through device asks of the VM: memory slots for mmapped BARs, GSIs and
//! MSI routes, irqfds, and bus ranges for the trapped parts of its BARs.
//!
//! The VMM core implements [`VmOps`] (its `interrupts.rs` owns the GSI routing table).
//! The device model keeps the ordering rules itself, so an implementation only has to do
//! what each call says:
//! - an MSI route is set **before** an irqfd is registered on its GSI, and the irqfd is
//!   unregistered **before** the route is removed (the other order raced in KVM's
//!   posted-interrupt code and crashed AMD hosts);
//! - every call may come from inside a guest config-space write, with the device's own
//!   lock held: an implementation must not lock the device, and may defer bus changes
//!   ([`VmOps::register_trap`]) to after the current exit if its bus lock is held there.

use vmm_sys_util::eventfd::EventFd;

/// A guest address space a BAR can live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressSpace {
    /// x86 I/O ports.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// An MSI message as the guest programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// The 64-bit message address.
    pub address: u64,
    /// The message data.
    pub data: u32,
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
    /// No GSI or memory slot is left.
    #[error("out of {0}: the VM has too many devices or vectors")]
    Exhausted(&'static str),
    /// Anything else the VMM reports.
    #[error("{0}")]
    Other(String),
}

/// The VMM services a VFIO device model uses.
pub trait VmOps: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` into the guest at `gpa`; returns the slot.
    fn add_memslot(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, VmOpsError>;
    /// Removes a slot returned by [`VmOps::add_memslot`].
    fn remove_memslot(&self, slot: u32) -> Result<(), VmOpsError>;
    /// A GSI no other device uses, for one MSI/MSI-X vector.
    fn allocate_gsi(&self) -> Result<u32, VmOpsError>;
    /// Gives back a GSI from [`VmOps::allocate_gsi`] (its route is already removed).
    fn release_gsi(&self, gsi: u32);
    /// Adds or replaces the MSI route of `gsi` and commits the routing table.
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), VmOpsError>;
    /// Removes the MSI route of `gsi` and commits the routing table.
    fn remove_msi_route(&self, gsi: u32) -> Result<(), VmOpsError>;
    /// `KVM_IRQFD`: a write to `fd` injects `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmOpsError>;
    /// `KVM_IRQFD` with `KVM_IRQFD_FLAG_RESAMPLE`: level-triggered `gsi` (an IOAPIC pin),
    /// de-asserted at guest EOI, which writes `resample`.
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), VmOpsError>;
    /// `KVM_IRQFD` with `KVM_IRQFD_FLAG_DEASSIGN` (plain or resample irqfds).
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmOpsError>;
    /// Routes guest accesses to `[base, base + len)` in `space` to this device's
    /// `BusDevice`. The device calls it when decoding turns on or a decoding BAR moves.
    fn register_trap(&self, space: AddressSpace, base: u64, len: u64) -> Result<(), VmOpsError>;
    /// Undoes [`VmOps::register_trap`] for the range starting at `base`.
    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError>;
}
