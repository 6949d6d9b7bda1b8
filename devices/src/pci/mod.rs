//! PCI: the host bridge (config mechanism #1 on 0xCF8/0xCFC), config space and BAR helpers.
//!
//! OWNER of this file and host_bridge.rs: VMM-core helper. config_space.rs, bar.rs and
//! caps.rs: passthrough helper.

pub mod bar;
pub mod caps;
pub mod config_space;
pub mod host_bridge;

/// A function on the guest's PCI bus, as the host bridge sees it.
///
/// Config accesses arrive as a 32-bit register index plus a byte offset inside it, the
/// way mechanism #1 delivers them; the device decides what each byte means.
pub trait PciDevice: Send {
    /// Reads config register `reg_idx` (offset `reg_idx * 4`).
    fn read_config_register(&mut self, reg_idx: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` inside config register `reg_idx`.
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]);
}
