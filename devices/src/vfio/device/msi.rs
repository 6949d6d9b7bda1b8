//! MSI: the capability, emulated in full, with multiple vectors and per-vector masking.
//!
//! The guest's address, data, enable, multiple-message-enable and mask bits are kept here
//! and never written to the device: the kernel programs the real capability with host
//! vectors when we enable MSI through VFIO. Each enabled vector `i` delivers
//! `data | i` (the low `log2(n)` data bits carry the vector number, as the spec says),
//! through a vector (`irq.rs`) like MSI-X.

use super::vector::Vector;
use crate::pci::config_space::merge_write;
use crate::pci::{InterruptRouting, MsiMessage};
use crate::vfio::device_fd::{IrqIndex, VfioDeviceOps};

const CTRL_ENABLE: u16 = 1 << 0;
const CTRL_64BIT: u16 = 1 << 7;
const CTRL_PER_VECTOR_MASK: u16 = 1 << 8;

/// The MSI capability's fixed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCap {
    /// Config offset of the capability.
    pub offset: usize,
    /// The address is 64 bits wide.
    pub is_64bit: bool,
    /// The capability has mask and pending registers.
    pub per_vector_mask: bool,
    /// log2 of the vectors the function can use (Multiple Message Capable).
    pub mmc: u8,
}

impl MsiCap {
    /// Parses the capability at `offset` of a config snapshot.
    pub fn parse(cfg: &[u8], offset: usize) -> Option<Self> {
        let b = cfg.get(offset + 2..offset + 4)?;
        let ctrl = u16::from_le_bytes([b[0], b[1]]);
        let cap = Self {
            offset,
            is_64bit: ctrl & CTRL_64BIT != 0,
            per_vector_mask: ctrl & CTRL_PER_VECTOR_MASK != 0,
            mmc: (((ctrl >> 1) & 7) as u8).min(5),
        };
        (offset + cap.size() <= cfg.len()).then_some(cap)
    }

    /// Length of the capability in config space.
    pub fn size(&self) -> usize {
        let base = if self.is_64bit { 0x0e } else { 0x0a };
        if self.per_vector_mask {
            base + 0x0a
        } else {
            base
        }
    }

    fn data_at(&self) -> usize {
        if self.is_64bit {
            0x0c
        } else {
            0x08
        }
    }

    fn mask_at(&self) -> Option<usize> {
        self.per_vector_mask.then_some(self.data_at() + 4)
    }
}

/// The guest-visible MSI state of one function.
#[derive(Debug)]
pub struct Msi {
    cap: MsiCap,
    enabled: bool,
    mme: u8,
    addr_lo: u32,
    addr_hi: u32,
    data: u16,
    mask: u32,
    vectors: Vec<Vector>,
    /// Vectors handed to VFIO by the current enable.
    live: usize,
}

impl Msi {
    /// MSI for `cap`, with `hw_count` vectors VFIO reports for the MSI index.
    pub fn new(cap: MsiCap, hw_count: u32) -> std::io::Result<Self> {
        let n = (hw_count as usize).min(1 << cap.mmc);
        Ok(Self {
            cap,
            enabled: false,
            mme: 0,
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            mask: 0,
            vectors: (0..n).map(|_| Vector::new()).collect::<Result<_, _>>()?,
            live: 0,
        })
    }

    /// The capability.
    pub fn cap(&self) -> &MsiCap {
        &self.cap
    }

    /// True while the guest has MSI enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True if `rel` is inside the capability.
    pub fn contains(&self, rel: usize) -> bool {
        rel < self.cap.size()
    }

    fn ctrl(&self) -> u16 {
        (if self.enabled { CTRL_ENABLE } else { 0 })
            | ((self.cap.mmc as u16) << 1)
            | ((self.mme as u16) << 4)
            | (if self.cap.is_64bit { CTRL_64BIT } else { 0 })
            | (if self.cap.per_vector_mask {
                CTRL_PER_VECTOR_MASK
            } else {
                0
            })
    }

    /// The dword at `rel` (dword-aligned, from the capability start) as the guest reads it;
    /// `hw` supplies the ID and next-pointer bytes of the first dword.
    pub fn read(&self, rel: usize, hw: u32) -> u32 {
        let data_at = self.cap.data_at();
        match rel {
            0 => (hw & 0xffff) | ((self.ctrl() as u32) << 16),
            4 => self.addr_lo,
            8 if self.cap.is_64bit => self.addr_hi,
            r if r == data_at => self.data as u32,
            r if Some(r) == self.cap.mask_at() => self.mask,
            // Pending bits: nothing is pending as far as the guest can tell.
            _ => 0,
        }
    }

    /// True if this write turns MSI on (so the caller must turn INTx off first).
    pub fn write_enables(&self, rel: usize, offset: usize, data: &[u8]) -> bool {
        rel == 0 && !self.enabled && {
            let v = merge_write(self.read(0, 0), offset, data);
            (v >> 16) as u16 & CTRL_ENABLE != 0
        }
    }

    /// A guest write of `data` at byte `offset` of the dword at `rel`.
    pub fn write(
        &mut self,
        rel: usize,
        offset: usize,
        data: &[u8],
        dev: &dyn VfioDeviceOps,
        routing: &dyn InterruptRouting,
    ) {
        let v = merge_write(self.read(rel, 0), offset, data);
        let data_at = self.cap.data_at();
        match rel {
            0 => {
                let ctrl = (v >> 16) as u16;
                let mme = (((ctrl >> 4) & 7) as u8).min(self.cap.mmc);
                let enable = ctrl & CTRL_ENABLE != 0;
                let resize = self.enabled && enable && mme != self.mme;
                self.mme = mme;
                if resize || (self.enabled && !enable) {
                    self.stop(dev, routing);
                }
                if enable && !self.enabled {
                    self.start(dev, routing);
                }
            }
            4 => self.addr_lo = v & !3,
            8 if self.cap.is_64bit => self.addr_hi = v,
            r if r == data_at => self.data = v as u16,
            r if Some(r) == self.cap.mask_at() => self.mask = v,
            _ => return,
        }
        self.sync(routing);
    }

    fn wanted(&self, i: usize) -> Option<MsiMessage> {
        if !self.enabled || i >= self.live || self.mask & (1 << i) != 0 {
            return None;
        }
        let n = self.live.max(1) as u16;
        let data = (self.data & !(n - 1)) | i as u16;
        Some(MsiMessage {
            address_lo: self.addr_lo,
            address_hi: self.addr_hi,
            data: data as u32,
        })
    }

    fn sync(&mut self, routing: &dyn InterruptRouting) {
        for i in 0..self.vectors.len() {
            let want = self.wanted(i);
            if let Err(e) = self.vectors[i].sync(want, routing) {
                crate::error_limited!("VFIO: MSI vector {i}: {e}");
            }
        }
    }

    fn start(&mut self, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        self.enabled = true;
        self.live = (1usize << self.mme).min(self.vectors.len());
        let fds: Vec<_> = self.vectors[..self.live]
            .iter()
            .map(|v| &v.eventfd)
            .collect();
        if fds.is_empty() {
            crate::warn_limited!("VFIO: the device reports no MSI vectors; MSI stays silent");
        } else if let Err(e) = dev.enable_irq(IrqIndex::Msi, &fds) {
            crate::error_limited!("VFIO: {e}; the guest's MSI interrupts will not arrive");
        }
        self.sync(routing);
    }

    fn stop(&mut self, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        self.enabled = false;
        self.sync(routing);
        self.live = 0;
        if let Err(e) = dev.disable_irq(IrqIndex::Msi) {
            crate::warn_limited!("VFIO: {e}");
        }
    }

    /// Quiets every vector, disables MSI in VFIO if it was on, frees the GSIs and clears
    /// the guest-visible state.
    pub fn reset(&mut self, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        if self.enabled {
            self.stop(dev, routing);
        }
        for v in &mut self.vectors {
            v.release(routing);
        }
        self.mme = 0;
        self.addr_lo = 0;
        self.addr_hi = 0;
        self.data = 0;
        self.mask = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::device_fd::IrqInfo;
    use crate::vfio::testing::{DevCall, FakeDevice, RecordingVm, VmCall};

    fn cfg_with(ctrl: u16) -> Vec<u8> {
        let mut cfg = vec![0u8; 256];
        cfg[0x50] = 0x05;
        cfg[0x52..0x54].copy_from_slice(&ctrl.to_le_bytes());
        cfg
    }

    fn setup(ctrl: u16, hw: u32) -> (Msi, FakeDevice, RecordingVm) {
        let mut dev = FakeDevice::new(vec![0; 256]);
        dev.irqs.insert(
            IrqIndex::Msi,
            IrqInfo {
                flags: 1,
                count: hw,
            },
        );
        let cap = MsiCap::parse(&cfg_with(ctrl), 0x50).unwrap();
        (Msi::new(cap, hw).unwrap(), dev, RecordingVm::new())
    }

    fn w32(m: &mut Msi, rel: usize, v: u32, dev: &FakeDevice, vm: &RecordingVm) {
        m.write(rel, 0, &v.to_le_bytes(), dev, vm);
    }

    #[test]
    fn layouts_by_address_width_and_masking() {
        for (ctrl, len, data_at) in [
            (0u16, 0x0a, 8),
            (0x80, 0x0e, 0x0c),
            (0x180, 0x18, 0x0c),
            (0x100, 0x14, 8),
        ] {
            let c = MsiCap::parse(&cfg_with(ctrl), 0x50).unwrap();
            assert_eq!((c.size(), c.data_at()), (len, data_at), "ctrl {ctrl:#x}");
        }
        let mut cfg = cfg_with(0);
        cfg[0xf2..0xf4].copy_from_slice(&0x180u16.to_le_bytes());
        assert!(
            MsiCap::parse(&cfg, 0xf0).is_none(),
            "0xf0 + 0x18 runs past 256 bytes"
        );
    }

    #[test]
    fn single_vector_32bit_enable_routes_before_irqfd() {
        let (mut m, dev, vm) = setup(0, 1);
        w32(&mut m, 4, 0xfee0_0003, &dev, &vm); // low bits are reserved
        w32(&mut m, 8, 0x4021, &dev, &vm);
        assert!(vm.calls().is_empty());
        assert!(m.write_enables(0, 2, &[1, 0]));
        m.write(0, 2, &[1, 0], &dev, &vm);
        assert_eq!(dev.calls(), vec![DevCall::Enable(IrqIndex::Msi, 1)]);
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x4021,
        };
        assert_eq!(
            vm.calls(),
            vec![
                VmCall::AllocGsi(24),
                VmCall::SetRoute(24, msg),
                VmCall::Irqfd(24)
            ]
        );
        assert_eq!(
            m.read(0, 0x6005) & 0x1_ffff,
            0x1_6005,
            "enable reads back, ID/next kept"
        );
    }

    #[test]
    fn multi_vector_64bit_with_per_vector_mask() {
        // MMC = 3 (8 vectors), 64-bit, per-vector masking; VFIO offers only 4.
        let (mut m, dev, vm) = setup(0x180 | (3 << 1), 4);
        w32(&mut m, 4, 0xfee0_0000, &dev, &vm);
        w32(&mut m, 8, 0x1, &dev, &vm);
        w32(&mut m, 0x0c, 0x48, &dev, &vm);
        w32(&mut m, 0x10, 0b0100, &dev, &vm); // vector 2 masked
                                              // Enable with MME = 2 (4 vectors) as a dword write at cap+0.
        let v = 0x05u32 | ((1 | (2 << 4)) << 16);
        w32(&mut m, 0, v, &dev, &vm);
        assert_eq!(dev.calls(), vec![DevCall::Enable(IrqIndex::Msi, 4)]);
        let routes = vm.routes();
        let mut datas: Vec<_> = routes.values().map(|r| (r.data, r.address_hi)).collect();
        datas.sort();
        assert_eq!(
            datas,
            vec![(0x48, 1), (0x49, 1), (0x4b, 1)],
            "vector 2 masked"
        );
        vm.clear();
        w32(&mut m, 0x10, 0, &dev, &vm); // unmask vector 2
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 1,
            data: 0x4a,
        };
        assert_eq!(
            vm.calls(),
            vec![
                VmCall::AllocGsi(27),
                VmCall::SetRoute(27, msg),
                VmCall::Irqfd(27)
            ]
        );
        assert_eq!(
            (m.read(0, 0) >> 16) & 0x7e,
            (3 << 1) | (2 << 4),
            "MMC and MME read back"
        );
    }

    #[test]
    fn mme_beyond_capability_is_clamped_and_disable_reverses_order() {
        let (mut m, dev, vm) = setup(1 << 1, 2); // MMC = 1: 2 vectors
        w32(&mut m, 4, 0xfee0_0000, &dev, &vm);
        w32(&mut m, 0, (1 | (5 << 4)) << 16, &dev, &vm);
        assert_eq!((m.read(0, 0) >> 20) & 7, 1);
        assert_eq!(vm.irqfds().len(), 2);
        vm.clear();
        dev.clear_calls();
        w32(&mut m, 0, 0, &dev, &vm);
        assert!(vm.irqfds().is_empty() && vm.routes().is_empty());
        let c = vm.calls();
        assert_eq!(
            &c[..2],
            &[VmCall::UnregisterIrqfd(24), VmCall::RemoveRoute(24)]
        );
        assert_eq!(dev.calls(), vec![DevCall::Disable(IrqIndex::Msi)]);
    }

    #[test]
    fn writes_outside_known_registers_are_ignored() {
        let (mut m, dev, vm) = setup(0, 1);
        m.write(0x40, 0, &[1, 2, 3, 4], &dev, &vm);
        m.write(4, 7, &[1], &dev, &vm);
        assert_eq!(m.read(4, 0), 0);
        assert!(vm.calls().is_empty() && dev.calls().is_empty());
    }
}
