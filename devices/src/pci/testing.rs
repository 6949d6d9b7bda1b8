//! Test fixtures of the PCI layer: a config space of plain writable registers (the bus
//! and ECAM tests, and the `bus_dispatch` fuzz target with the `fuzzing` feature) and one
//! MSI message (the routing tests).

use super::{MsiMessage, PciDevice};

/// An MSI to the local APIC of CPU 0, vector 0x31: what the routing tests program.
pub const MSG: MsiMessage = MsiMessage {
    address_lo: 0xfee0_0000,
    address_hi: 0,
    data: 0x4031,
};

/// A function whose config registers are plain writable dwords (64 for a PCI header
/// space, 1024 for a full PCIe space); reads past them give 0.
pub struct Regs(pub Vec<u32>);

impl Regs {
    /// `n` zeroed registers.
    pub fn zeroed(n: usize) -> Self {
        Self(vec![0; n])
    }
}

impl PciDevice for Regs {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        self.0.get(reg_idx).copied().unwrap_or(0)
    }
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        let Some(r) = self.0.get_mut(reg_idx) else {
            return;
        };
        let mut b = r.to_le_bytes();
        b[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        *r = u32::from_le_bytes(b);
    }
}
