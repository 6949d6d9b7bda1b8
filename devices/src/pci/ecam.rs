//! PCI Express enhanced configuration access (ECAM): every function's 4 KiB of config
//! space as memory, at `base + (bus << 20 | device << 15 | function << 12 | offset)`, in
//! the window the ACPI MCFG table describes.
//!
//! Accesses are 1, 2 or 4 bytes inside one dword, as the PCIe specification allows; any
//! other access reads all-ones and writes nothing. Functions that do not exist read
//! all-ones ([`PciRoot::config_read`]).

use std::sync::{Arc, Mutex};

use super::host_bridge::PciRoot;
use crate::bus::BusDevice;

/// Bytes of config space per function.
pub const FUNCTION_CONFIG_SIZE: u64 = 0x1000;
/// Bytes of window per bus (32 devices x 8 functions x 4 KiB).
pub const BUS_WINDOW_SIZE: u64 = 1 << 20;

/// The ECAM window of bus 0 and the buses after it, as one MMIO bus device.
pub struct EcamWindow {
    root: Arc<Mutex<PciRoot>>,
}

impl EcamWindow {
    /// The window in front of `root`; the VMM puts it on the MMIO bus.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root }
    }
}

/// (bus, device, function, dword register, byte in the dword) of a window offset.
fn decode(offset: u64, len: usize) -> Option<(u32, u32, u32, usize, usize)> {
    let byte = (offset & 3) as usize;
    if !matches!(len, 1 | 2 | 4) || byte + len > 4 {
        return None;
    }
    let bus = u32::try_from(offset >> 20).ok()?;
    let device = ((offset >> 15) & 0x1f) as u32;
    let function = ((offset >> 12) & 0x7) as u32;
    let reg = ((offset & 0xfff) >> 2) as usize;
    Some((bus, device, function, reg, byte))
}

impl BusDevice for EcamWindow {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let Some((bus, device, function, reg, byte)) = decode(offset, data.len()) else {
            data.fill(0xff);
            return;
        };
        let value = self
            .root
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config_read(bus, device, function, reg);
        data.copy_from_slice(&value.to_le_bytes()[byte..byte + data.len()]);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((bus, device, function, reg, byte)) = decode(offset, data.len()) {
            self.root
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .config_write(bus, device, function, reg, byte, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::host_bridge::{HOST_BRIDGE_DEVICE, HOST_BRIDGE_VENDOR};

    use crate::pci::testing::Regs;

    fn window() -> (EcamWindow, Arc<Mutex<PciRoot>>) {
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let mut regs = vec![0u32; 1024];
        regs[0] = 0x1234_5678;
        regs[0x100 / 4] = 0x0001_0001; // an AER header at 0x100
        regs[0xffc / 4] = 0xdead_beef;
        root.lock()
            .unwrap()
            .add_device(3, Arc::new(Mutex::new(Regs(regs.to_vec()))))
            .unwrap();
        (EcamWindow::new(root.clone()), root)
    }

    fn addr(bus: u64, dev: u64, func: u64, off: u64) -> u64 {
        (bus << 20) | (dev << 15) | (func << 12) | off
    }

    fn read(w: &mut EcamWindow, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        w.read(0, at, &mut b);
        b
    }

    #[test]
    fn bus_device_function_and_offset_decode_to_the_right_register() {
        let (mut w, _) = window();
        let id = u32::from(HOST_BRIDGE_DEVICE) << 16 | u32::from(HOST_BRIDGE_VENDOR);
        assert_eq!(read(&mut w, addr(0, 0, 0, 0), 4), id.to_le_bytes());
        assert_eq!(
            read(&mut w, addr(0, 3, 0, 0), 4),
            0x1234_5678u32.to_le_bytes()
        );
        assert_eq!(
            read(&mut w, addr(0, 3, 0, 0x100), 4),
            [1, 0, 1, 0],
            "extended space"
        );
        assert_eq!(
            read(&mut w, addr(0, 3, 0, 0xffc), 4),
            0xdead_beefu32.to_le_bytes()
        );
        assert_eq!(
            read(&mut w, addr(0, 3, 0, 0xffe), 2),
            [0xad, 0xde],
            "word at +2"
        );
        assert_eq!(read(&mut w, addr(0, 3, 0, 0x1), 1), [0x56], "byte at +1");
    }

    #[test]
    fn absent_functions_buses_and_bad_sizes_read_all_ones() {
        let (mut w, _) = window();
        for at in [
            addr(0, 4, 0, 0),
            addr(0, 3, 1, 0),
            addr(1, 3, 0, 0),
            addr(255, 31, 7, 0xffc),
        ] {
            assert_eq!(read(&mut w, at, 4), [0xff; 4], "{at:#x}");
        }
        assert_eq!(
            read(&mut w, addr(0, 3, 0, 2), 4),
            [0xff; 4],
            "crosses a dword"
        );
        assert_eq!(
            read(&mut w, addr(0, 3, 0, 0), 8),
            [0xff; 8],
            "8-byte access"
        );
        assert_eq!(read(&mut w, addr(0, 3, 0, 3), 3), [0xff; 3]);
        assert_eq!(
            read(&mut w, u64::MAX - 3, 4),
            [0xff; 4],
            "far past the window"
        );
    }

    #[test]
    fn writes_land_in_the_addressed_bytes_and_nowhere_else() {
        let (mut w, root) = window();
        w.write(0, addr(0, 3, 0, 0x204), &0xaabb_ccddu32.to_le_bytes());
        w.write(0, addr(0, 3, 0, 0x206), &[0x11]);
        w.write(0, addr(0, 3, 0, 0x20a), &[1, 2, 3, 4]); // crosses: dropped
        w.write(0, addr(0, 5, 0, 0x204), &[9]); // no function: dropped
        let r = root.lock().unwrap();
        assert_eq!(r.config_read(0, 3, 0, 0x204 / 4), 0xaa11_ccdd);
        assert_eq!(r.config_read(0, 3, 0, 0x208 / 4), 0);
    }
}
