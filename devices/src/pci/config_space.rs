//! A config-space overlay: which bits of each dword the guest sees from the device and
//! which from us.
//!
//! A passed-through function's config space is read from the device (through VFIO's
//! config region) except where the overlay says otherwise. Each overlaid dword has a mask
//! of emulated bits, their value, and a mask of the emulated bits a guest write may
//! change. Guest writes update the emulated bits and are forwarded to the device only for
//! bytes that are not entirely emulated, so the device never sees, e.g., our BAR values.

use std::collections::BTreeMap;

use super::caps::ConfigPatch;

/// Standard (conventional PCI) config space size.
pub const PCI_CONFIG_SIZE: usize = 256;
/// PCIe extended config space size.
pub const PCIE_CONFIG_SIZE: usize = 4096;

/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Command: I/O space decode.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command: memory space decode.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus mastering (the device may DMA).
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Offset of the header-type byte.
pub const HEADER_TYPE: usize = 0x0e;
/// Header type: multi-function device.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
/// Offset of the interrupt line byte.
pub const INTERRUPT_LINE: usize = 0x3c;
/// Offset of the interrupt pin byte.
pub const INTERRUPT_PIN: usize = 0x3d;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Emulated {
    mask: u32,
    value: u32,
    write_mask: u32,
}

/// The emulated part of one function's config space.
#[derive(Clone, Debug)]
pub struct ConfigOverlay {
    size: usize,
    regs: BTreeMap<usize, Emulated>,
}

/// Puts `data` (1-4 bytes at byte `offset` of a dword) over `old`; out-of-range parts
/// of the write are ignored.
pub fn merge_write(old: u32, offset: usize, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(offset + i) {
            *slot = *b;
        }
    }
    u32::from_le_bytes(bytes)
}

/// Byte-lane mask of a write of `len` bytes at byte `offset` of a dword.
pub fn write_lanes(offset: usize, len: usize) -> u32 {
    let mut m = 0u32;
    for i in offset..(offset + len).min(4) {
        m |= 0xff << (i * 8);
    }
    m
}

impl ConfigOverlay {
    /// An overlay with nothing emulated, for a config space of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            regs: BTreeMap::new(),
        }
    }

    /// Size of the config space the guest sees.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Emulates the `mask` bits of the dword at `offset` with `value`; the guest may
    /// change the `write_mask` bits of them. Combines with earlier calls for that dword.
    pub fn emulate(&mut self, offset: usize, mask: u32, value: u32, write_mask: u32) {
        let e = self.regs.entry(offset & !3).or_default();
        e.mask |= mask;
        e.value = (e.value & !mask) | (value & mask);
        e.write_mask = (e.write_mask & !mask) | (write_mask & mask);
    }

    /// Applies a read-only patch (e.g. a capability unlink).
    pub fn patch(&mut self, p: ConfigPatch) {
        self.emulate(p.offset, p.mask, p.value, 0);
    }

    /// Replaces the value of already-emulated bits (device-side state changes).
    pub fn set(&mut self, offset: usize, mask: u32, value: u32) {
        if let Some(e) = self.regs.get_mut(&(offset & !3)) {
            let m = mask & e.mask;
            e.value = (e.value & !m) | (value & m);
        }
    }

    /// The emulated value of the dword at `offset` (0 where not emulated).
    #[cfg(test)]
    pub fn emulated_value(&self, offset: usize) -> u32 {
        self.regs
            .get(&(offset & !3))
            .map_or(0, |e| e.value & e.mask)
    }

    /// What the guest reads at dword `offset`, given what the device returned.
    pub fn read(&self, offset: usize, hw: u32) -> u32 {
        if offset >= self.size {
            return 0xffff_ffff;
        }
        match self.regs.get(&(offset & !3)) {
            Some(e) => (hw & !e.mask) | (e.value & e.mask),
            None => hw,
        }
    }

    /// Applies a guest write of `data` at byte `offset` of dword `reg_offset` to the
    /// emulated bits. Returns the byte range (config offset, bytes) to forward to the
    /// device: the written bytes that are not entirely emulated (possibly none).
    pub fn write(
        &mut self,
        reg_offset: usize,
        offset: usize,
        data: &[u8],
    ) -> Vec<(usize, Vec<u8>)> {
        let reg_offset = reg_offset & !3;
        if reg_offset >= self.size || offset >= 4 {
            return Vec::new();
        }
        let lanes = write_lanes(offset, data.len());
        let mask = match self.regs.get_mut(&reg_offset) {
            Some(e) => {
                let new = merge_write(e.value, offset, data);
                let wm = e.write_mask & lanes;
                e.value = (e.value & !wm) | (new & wm);
                e.mask
            }
            None => 0,
        };
        // Forward contiguous runs of bytes that still have device-owned bits.
        let mut runs: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, b) in data.iter().enumerate() {
            let lane = offset + i;
            if lane >= 4 || (mask >> (lane * 8)) & 0xff == 0xff {
                continue;
            }
            match runs.last_mut() {
                Some((start, bytes)) if *start + bytes.len() == reg_offset + lane => bytes.push(*b),
                _ => runs.push((reg_offset + lane, vec![*b])),
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mix_device_and_emulated_bits() {
        let mut o = ConfigOverlay::new(PCI_CONFIG_SIZE);
        // Multifunction bit of the header type hidden.
        o.emulate(HEADER_TYPE, (HEADER_TYPE_MULTIFUNCTION as u32) << 16, 0, 0);
        assert_eq!(o.read(0x0c, 0x0080_0010), 0x0000_0010);
        assert_eq!(o.read(0x08, 0x0200_0001), 0x0200_0001, "untouched dword");
        assert_eq!(o.read(0x100, 0), 0xffff_ffff, "beyond a 256-byte space");
    }

    #[test]
    fn writes_update_only_writable_emulated_bits_and_forward_the_rest() {
        let mut o = ConfigOverlay::new(PCI_CONFIG_SIZE);
        // Interrupt line emulated read-write; pin (next byte) from the device.
        o.emulate(INTERRUPT_LINE, 0xff, 0, 0xff);
        let fwd = o.write(INTERRUPT_LINE, 0, &[0x0b, 0x07, 0x11, 0x22]);
        assert_eq!(o.read(INTERRUPT_LINE, 0x0000_0100), 0x0000_010b);
        assert_eq!(
            fwd,
            vec![(0x3d, vec![0x07, 0x11, 0x22])],
            "line byte kept from the device"
        );

        // A read-only emulated field ignores writes.
        o.emulate(0x30, 0xffff_ffff, 0, 0);
        assert!(o.write(0x30, 0, &0xffff_ffffu32.to_le_bytes()).is_empty());
        assert_eq!(o.read(0x30, 0xfff0_0001), 0);
    }

    #[test]
    fn byte_and_word_writes_land_in_the_right_lanes() {
        let mut o = ConfigOverlay::new(PCI_CONFIG_SIZE);
        o.emulate(0x40, 0xffff_0000, 0, 0xc000_0000);
        o.write(0x40, 3, &[0xff]);
        assert_eq!(o.emulated_value(0x40), 0xc000_0000);
        o.write(0x40, 2, &[0x00, 0x40]);
        assert_eq!(o.emulated_value(0x40), 0x4000_0000);
        // Writes that run past the dword are clipped, not a panic.
        let fwd = o.write(0x40, 3, &[0, 1, 2, 3]);
        assert_eq!(o.emulated_value(0x40), 0);
        assert!(fwd.is_empty());
        assert!(o.write(0x40, 9, &[1]).is_empty());
    }

    #[test]
    fn patches_on_one_dword_combine() {
        let mut o = ConfigOverlay::new(PCIE_CONFIG_SIZE);
        o.patch(ConfigPatch {
            offset: 0x100,
            mask: 0x000f_ffff,
            value: 0,
        });
        o.patch(ConfigPatch {
            offset: 0x100,
            mask: 0xfff0_0000,
            value: 0x200 << 20,
        });
        assert_eq!(o.read(0x100, 0x1401_000e), 0x2000_0000);
    }

    #[test]
    fn merge_write_helpers() {
        assert_eq!(merge_write(0x1122_3344, 1, &[0xaa, 0xbb]), 0x11bb_aa44);
        assert_eq!(merge_write(0, 3, &[1, 2]), 0x0100_0000);
        assert_eq!(write_lanes(2, 2), 0xffff_0000);
        assert_eq!(write_lanes(0, 4), 0xffff_ffff);
    }
}
