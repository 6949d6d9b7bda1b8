//! The expansion ROM BAR (config offset 0x30): sized from VFIO's ROM region or from an
//! image the user gives (`--device ...,romfile=PATH`), hidden with `rombar=off` or when
//! the device has none.
//!
//! The ROM decodes only while its enable bit and the command register's memory bit are
//! both set, at the address the guest programmed (Linux enables it just long enough to
//! copy the image, e.g. for `/sys/bus/pci/devices/*/rom` or amdgpu's VBIOS read). It is
//! never mmapped: reads trap and are answered from the region (bounds-checked) or the
//! image; writes are dropped, as a ROM's are.

use std::sync::Arc;

use crate::vfio::device_fd::{VfioDeviceOps, ROM_REGION};

/// Smallest ROM BAR the PCI specification allows (bits 10:1 are reserved).
pub const MIN_ROM_SIZE: u64 = 2048;
/// Largest ROM BAR: the register's address field is 32-bit, and bit 31 must stay.
pub const MAX_ROM_SIZE: u64 = 1 << 24;
/// The register's enable bit.
const ENABLE: u32 = 1;
/// Address bits of the register (31:11).
const ADDRESS_MASK: u32 = 0xffff_f800;

/// Where the guest's ROM comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RomImage {
    /// The device's own ROM, through VFIO's ROM region (hidden if it has none).
    #[default]
    FromDevice,
    /// No ROM BAR (`rombar=off`).
    Hidden,
    /// This image instead (`romfile=PATH`, read by the VMM).
    Bytes(Arc<[u8]>),
}

/// What backs a visible ROM.
#[derive(Debug)]
enum Backing {
    /// VFIO's ROM region, `len` bytes of it readable.
    Region { len: u64 },
    /// An image in memory.
    Image(Arc<[u8]>),
}

/// The ROM BAR's state.
#[derive(Debug)]
pub(crate) struct Rom {
    backing: Backing,
    /// BAR size: a power of two, at least [`MIN_ROM_SIZE`].
    size: u64,
    /// Address bits and the enable bit, as the guest wrote them.
    reg: u32,
    initial_addr: u32,
    /// Where the VMM routes the ROM's accesses to us, while it decodes.
    pub(super) trap_base: Option<u64>,
}

/// The BAR size for `len` bytes of ROM, or `None` when no valid BAR holds it.
fn bar_size(len: u64) -> Option<u64> {
    let size = len.checked_next_power_of_two()?.max(MIN_ROM_SIZE);
    (len > 0 && size <= MAX_ROM_SIZE).then_some(size)
}

impl Rom {
    /// The ROM the guest gets from `image` and the device, if any; `place` gives it an
    /// address in the 32-bit BAR window for its size.
    pub(crate) fn new(
        name: &str,
        image: &RomImage,
        dev: &dyn VfioDeviceOps,
        place: impl FnOnce(u64) -> Option<u64>,
    ) -> Option<Self> {
        let backing = match image {
            RomImage::Hidden => return None,
            RomImage::Bytes(b) => Backing::Image(b.clone()),
            RomImage::FromDevice => {
                let info = dev.region_info(ROM_REGION)?;
                if !info.readable() || info.size == 0 {
                    return None;
                }
                Backing::Region { len: info.size }
            }
        };
        let len = match &backing {
            Backing::Region { len } => *len,
            Backing::Image(b) => b.len() as u64,
        };
        let Some(size) = bar_size(len) else {
            log::warn!("{name}: a {len}-byte ROM does not fit a ROM BAR (at most 16 MiB); hidden");
            return None;
        };
        let Some(addr) = place(size).and_then(|a| u32::try_from(a).ok()) else {
            log::warn!("{name}: no room for its {size}-byte ROM in the 32-bit BAR window; hidden");
            return None;
        };
        Some(Self {
            backing,
            size,
            reg: addr & ADDRESS_MASK,
            initial_addr: addr & ADDRESS_MASK,
            trap_base: None,
        })
    }

    /// BAR size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The register as the guest reads it (a sizing write reads back the size mask).
    pub(crate) fn read_reg(&self) -> u32 {
        self.reg
    }

    /// A guest write of the whole register (the caller merged partial writes).
    pub(crate) fn write_reg(&mut self, value: u32) {
        let addr_mask = ADDRESS_MASK & !(self.size as u32 - 1);
        self.reg = (value & addr_mask) | (value & ENABLE);
    }

    /// Where it decodes when the command register's memory bit is `memory_on`.
    pub(crate) fn decoding_at(&self, memory_on: bool) -> Option<u64> {
        let addr = u64::from(self.reg & ADDRESS_MASK);
        let decodes = memory_on && self.reg & ENABLE != 0 && addr != 0;
        (decodes && addr + self.size <= 1 << 32).then_some(addr)
    }

    /// Back to the power-on state: disabled, at its first address.
    pub(crate) fn reset(&mut self) {
        self.reg = self.initial_addr;
    }

    /// A guest read of `data.len()` bytes at `offset` into the ROM; past the image, or
    /// an access the BAR cannot hold, reads all-ones.
    pub(crate) fn read(&self, dev: &dyn VfioDeviceOps, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return;
        };
        if data.is_empty() || data.len() > 8 || end > self.size {
            return;
        }
        match &self.backing {
            Backing::Region { len } if end <= *len => dev.region_read(ROM_REGION, offset, data),
            Backing::Region { .. } => {}
            Backing::Image(b) => {
                let from = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, d) in data.iter_mut().enumerate() {
                    if let Some(v) = from.checked_add(i).and_then(|j| b.get(j)) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::device_fd::RegionInfo;
    use crate::vfio::testing::FakeDevice;
    use vfio_bindings::bindings::vfio::VFIO_REGION_INFO_FLAG_READ;

    /// A device whose ROM region holds `len` bytes counting up from 0x55.
    fn device_with_rom(len: u64) -> FakeDevice {
        let mut d = FakeDevice::new(vec![0u8; 256]);
        let bytes = (0..len).map(|i| (0x55 + i) as u8).collect();
        d.add_region(
            ROM_REGION,
            RegionInfo {
                flags: VFIO_REGION_INFO_FLAG_READ,
                size: len,
                offset: 6 << 24,
                ..Default::default()
            },
            bytes,
        );
        d
    }

    #[test]
    fn sizes_are_powers_of_two_of_at_least_2_kib() {
        assert_eq!(bar_size(1), Some(2048));
        assert_eq!(bar_size(2048), Some(2048));
        assert_eq!(bar_size(2049), Some(4096));
        assert_eq!(bar_size(60 * 1024), Some(64 * 1024));
        assert_eq!(bar_size(16 << 20), Some(16 << 20));
        assert_eq!(bar_size((16 << 20) + 1), None, "too large for the register");
        assert_eq!(bar_size(0), None);
        assert_eq!(bar_size(u64::MAX), None);
    }

    #[test]
    fn the_register_sizes_enables_and_decodes_like_a_rom_bar() {
        let d = device_with_rom(0x8000);
        let mut r = Rom::new("t", &RomImage::FromDevice, &d, |_| Some(0xc010_0000)).unwrap();
        assert_eq!(r.size(), 0x8000);
        assert_eq!(r.read_reg(), 0xc010_0000, "placed, disabled");
        assert_eq!(r.decoding_at(true), None, "enable bit clear");
        r.write_reg(0xffff_f800);
        assert_eq!(r.read_reg(), 0xffff_8000, "size mask: 32 KiB");
        r.write_reg(0xc010_0001);
        assert_eq!(r.decoding_at(false), None, "memory decode off");
        assert_eq!(r.decoding_at(true), Some(0xc010_0000));
        r.write_reg(0xffff_8001);
        assert_eq!(
            r.decoding_at(true),
            Some(0xffff_8000),
            "the top 32 KiB below 4 GiB: the guest's choice, the bus refuses overlaps"
        );
        r.write_reg(0x0000_0001);
        assert_eq!(r.decoding_at(true), None, "address 0: no decode");
        r.reset();
        assert_eq!(r.read_reg(), 0xc010_0000);
    }

    #[test]
    fn reads_come_from_the_region_or_the_image_and_stop_at_their_end() {
        let d = device_with_rom(0x1000);
        let r = Rom::new("t", &RomImage::FromDevice, &d, |_| Some(0xc000_0000)).unwrap();
        assert_eq!(r.size(), 0x1000);
        let mut b = [0u8; 4];
        r.read(&d, 0x1, &mut b);
        assert_eq!(b, [0x56, 0x57, 0x58, 0x59], "the device's ROM bytes");
        r.read(&d, 0xffe, &mut b);
        assert_eq!(b, [0xff; 4], "crosses the end");
        r.read(&d, u64::MAX - 1, &mut b);
        assert_eq!(b, [0xff; 4]);

        let image: Arc<[u8]> = vec![0x55, 0xaa, 0x10, 0x20, 0x30].into();
        let r = Rom::new("t", &RomImage::Bytes(image), &d, |_| Some(0xc000_0000)).unwrap();
        assert_eq!(r.size(), 2048);
        let mut b = [0u8; 8];
        r.read(&d, 0, &mut b);
        assert_eq!(
            b,
            [0x55, 0xaa, 0x10, 0x20, 0x30, 0xff, 0xff, 0xff],
            "0xff past the image"
        );
        let mut big = [0u8; 16];
        r.read(&d, 0, &mut big);
        assert_eq!(big, [0xff; 16], "wider than 8 bytes");
    }

    #[test]
    fn no_rom_hidden_or_no_room_means_no_bar() {
        let none = FakeDevice::new(vec![0u8; 256]);
        assert!(Rom::new("t", &RomImage::FromDevice, &none, |_| Some(0xc000_0000)).is_none());
        let d = device_with_rom(0x8000);
        assert!(Rom::new("t", &RomImage::Hidden, &d, |_| Some(0xc000_0000)).is_none());
        assert!(Rom::new("t", &RomImage::FromDevice, &d, |_| None).is_none());
        let mut unreadable = device_with_rom(0x8000);
        unreadable.regions.get_mut(&ROM_REGION).unwrap().0.flags = 0;
        assert!(Rom::new("t", &RomImage::FromDevice, &unreadable, |_| Some(
            0xc000_0000
        ))
        .is_none());
    }
}
