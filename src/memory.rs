//! Guest RAM: layout around the 32-bit PCI hole, the e820 map, optional hugepage backing.
//!
//! OWNER: boot helper. The signatures below are the contract the VMM core builds against.

use vm_memory::GuestMemoryMmap;

/// Errors from creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Placeholder until the layout lands.
    #[error("guest memory is not implemented yet")]
    NotImplemented,
}

/// Allocates guest RAM of `size` bytes laid out around the 32-bit hole.
pub fn create_guest_memory(_size: u64, _hugepages: bool) -> Result<GuestMemoryMmap, MemoryError> {
    Err(MemoryError::NotImplemented)
}
