//! MSI-X: the capability's control word, the emulated vector table and PBA.
//!
//! The table lives in a BAR, but vfio-pci drops accesses to it through the region fd and
//! the real table must hold host vectors, so the guest's table is ours: trapped, kept in
//! memory, and turned into KVM MSI routes. Each vector is an `irq::Vector`.
//!
//! Host vectors follow the guest's use, as in QEMU: a vector gets its eventfd, and in
//! VFIO its host IRQ, when the guest first unmasks it. Enabling MSI-X hands VFIO only the
//! vectors already unmasked (at least one slot: the kernel enables MSI-X with one); each
//! later first unmask adds its vector with a `SET_IRQS` of that one vector, which kernels
//! without `VFIO_IRQ_INFO_NORESIZE` (dynamic MSI-X, Linux 6.5+) grow the set by. Where
//! the index is `NORESIZE`, or growing fails, every vector is wired at enable as before:
//! a 2048-entry table then costs 2048 host IRQs, and only there. A wired vector stays
//! wired until MSI-X is disabled (guests mask and unmask often; masking is KVM-side).
//!
//! All vectors start masked and MSI-X disabled. A vector delivers only while MSI-X is
//! enabled, the function mask is clear and its own mask bit is clear. Pending state is
//! each vector's eventfd count: a masked vector's interrupts wait there and KVM's irqfd
//! delivers them when it is attached again on unmask; the PBA shows exactly that (bit i
//! set while vector i is masked and its eventfd is readable). A vector the guest never
//! unmasked has no eventfd in VFIO, so nothing can be pending on it.

use super::vector::Vector;
use crate::pci::{InterruptRouting, MsiMessage};
use crate::vfio::device_fd::{IrqIndex, IrqInfo, VfioDeviceOps, VFIO_IRQ_INFO_NORESIZE};

/// MSI-X control: enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// MSI-X control: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_SIZE: u64 = 16;
const VECTOR_MASKED: u32 = 1;

/// The MSI-X capability's fixed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Config offset of the capability.
    pub offset: usize,
    /// Number of table entries.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u64,
}

impl MsixCap {
    /// Parses the capability at `offset` of a config snapshot; `None` if it does not fit
    /// or names a BAR that cannot exist.
    pub fn parse(cfg: &[u8], offset: usize) -> Option<Self> {
        let rd = |o: usize| -> Option<u32> {
            let b = cfg.get(offset + o..offset + o + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let ctrl = (rd(0)? >> 16) as u16;
        let table = rd(4)?;
        let pba = rd(8)?;
        let cap = Self {
            offset,
            table_size: (ctrl & 0x7ff) + 1,
            table_bar: (table & 7) as u8,
            table_offset: (table & !7) as u64,
            pba_bar: (pba & 7) as u8,
            pba_offset: (pba & !7) as u64,
        };
        (cap.table_bar < 6 && cap.pba_bar < 6).then_some(cap)
    }

    /// Table length in bytes.
    pub fn table_len(&self) -> u64 {
        self.table_size as u64 * ENTRY_SIZE
    }

    /// PBA length in bytes (one bit per vector, in qwords).
    pub fn pba_len(&self) -> u64 {
        (self.table_size as u64).div_ceil(64) * 8
    }
}

/// The guest-visible MSI-X state of one function.
#[derive(Debug)]
pub struct Msix {
    cap: MsixCap,
    enabled: bool,
    function_mask: bool,
    /// Each entry as four dwords: address low, address high, data, vector control.
    table: Vec<[u32; 4]>,
    /// One slot per vector VFIO can signal (may be below the table size); a vector is
    /// created on its first unmask.
    vectors: Vec<Option<Vector>>,
    /// VFIO grows an enabled vector set one vector at a time (no `NORESIZE`).
    growable: bool,
    /// While enabled: which vectors VFIO has an eventfd for.
    wired: Vec<bool>,
    /// VFIO refused the whole set since MSI-X went on: no retry per guest write.
    refused: bool,
}

impl Msix {
    /// MSI-X for `cap`, with what VFIO reports for the MSI-X index (`info.count`
    /// vectors; `NORESIZE` or not).
    pub fn new(cap: MsixCap, info: IrqInfo) -> Self {
        let n = cap.table_size as usize;
        let hw_count = (info.count as usize).min(n);
        Self {
            cap,
            enabled: false,
            function_mask: false,
            table: vec![[0, 0, 0, VECTOR_MASKED]; n],
            vectors: (0..hw_count).map(|_| None).collect(),
            growable: info.flags & VFIO_IRQ_INFO_NORESIZE == 0,
            wired: vec![false; hw_count],
            refused: false,
        }
    }

    /// How many vectors VFIO holds an eventfd for now (each one a host IRQ).
    #[cfg(test)]
    pub fn wired_vectors(&self) -> usize {
        self.wired.iter().filter(|w| **w).count()
    }

    /// The capability.
    pub fn cap(&self) -> &MsixCap {
        &self.cap
    }

    /// True while the guest has MSI-X enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The enable and function-mask bits as the guest reads them.
    pub fn control_bits(&self) -> u16 {
        (if self.enabled { CTRL_ENABLE } else { 0 })
            | (if self.function_mask {
                CTRL_FUNCTION_MASK
            } else {
                0
            })
    }

    /// True if a control word `ctrl` would turn MSI-X on from off.
    pub fn would_enable(&self, ctrl: u16) -> bool {
        !self.enabled && ctrl & CTRL_ENABLE != 0
    }

    /// The eventfd of vector `i` (the tests and the hardware probes fire it).
    #[cfg(test)]
    pub fn eventfd(&self, i: usize) -> Option<&vmm_sys_util::eventfd::EventFd> {
        self.vectors.get(i)?.as_ref().map(|v| &v.eventfd)
    }

    /// The guest wrote the control word (only enable and function mask are writable).
    pub fn write_control(
        &mut self,
        ctrl: u16,
        dev: &dyn VfioDeviceOps,
        routing: &dyn InterruptRouting,
    ) {
        let enable = ctrl & CTRL_ENABLE != 0;
        let was = self.enabled;
        self.function_mask = ctrl & CTRL_FUNCTION_MASK != 0;
        match (was, enable) {
            (false, true) => {
                self.enabled = true;
                self.wire_on_enable(dev);
                self.sync_all(dev, routing);
            }
            (true, false) => {
                self.enabled = false;
                self.sync_all(dev, routing);
                if let Err(e) = dev.disable_irq(IrqIndex::Msix) {
                    crate::warn_limited!("VFIO: {e}");
                }
                self.wired.fill(false);
                self.refused = false;
            }
            _ => self.sync_all(dev, routing),
        }
    }

    /// Hands VFIO its first vector set as MSI-X goes on: the vectors the guest has
    /// unmasked already where VFIO can grow the set later, every vector where it cannot.
    fn wire_on_enable(&mut self, dev: &dyn VfioDeviceOps) {
        if self.vectors.is_empty() {
            crate::warn_limited!("VFIO: the device reports no MSI-X vectors; MSI-X stays silent");
            return;
        }
        if self.growable {
            let used: Vec<usize> = (0..self.vectors.len())
                .filter(|&i| self.table[i][3] & VECTOR_MASKED == 0)
                .collect();
            for &i in &used {
                self.create(i);
            }
            // At least one slot: VFIO enables MSI-X with one vector, here without an
            // eventfd when the guest uses none yet.
            let len = used.last().map_or(1, |l| l + 1);
            let fds: Vec<_> = (0..len)
                .map(|i| {
                    self.vectors[i]
                        .as_ref()
                        .filter(|_| used.contains(&i))
                        .map(|v| &v.eventfd)
                })
                .collect();
            match dev.set_irq_vectors(IrqIndex::Msix, 0, &fds) {
                Ok(()) => {
                    for i in used {
                        self.wired[i] = true;
                    }
                    return;
                }
                Err(e) => {
                    crate::warn_limited!("VFIO: {e}; enabling every MSI-X vector at once instead");
                    self.growable = false;
                }
            }
        }
        self.wire_all(dev);
    }

    /// Every vector at once: `NORESIZE` kernels, and the fallback when growing fails.
    fn wire_all(&mut self, dev: &dyn VfioDeviceOps) {
        for i in 0..self.vectors.len() {
            self.create(i);
        }
        let fds: Vec<_> = self.vectors.iter().flatten().map(|v| &v.eventfd).collect();
        if fds.len() < self.vectors.len() {
            return; // create() said why
        }
        match dev.enable_irq(IrqIndex::Msix, &fds) {
            Ok(()) => self.wired.fill(true),
            Err(e) => {
                self.refused = true;
                crate::error_limited!("VFIO: {e}; the guest's MSI-X interrupts will not arrive")
            }
        }
    }

    /// Vector `i`'s eventfd, made on first use.
    fn create(&mut self, i: usize) -> bool {
        let Some(slot) = self.vectors.get_mut(i) else {
            return false;
        };
        if slot.is_none() {
            match Vector::new() {
                Ok(v) => *slot = Some(v),
                Err(e) => {
                    crate::error_limited!("VFIO: no eventfd for MSI-X vector {i}: {e}");
                    return false;
                }
            }
        }
        true
    }

    /// Makes sure VFIO signals vector `i` (MSI-X enabled): adds it to the set where
    /// VFIO can grow it, else re-enables the whole set.
    fn wire(&mut self, i: usize, dev: &dyn VfioDeviceOps) {
        if !self.enabled || self.refused || self.wired.get(i) != Some(&false) || !self.create(i) {
            return;
        }
        if self.growable {
            let fd = self.vectors[i].as_ref().map(|v| &v.eventfd);
            let Ok(start) = u32::try_from(i) else { return };
            match dev.set_irq_vectors(IrqIndex::Msix, start, &[fd]) {
                Ok(()) => {
                    self.wired[i] = true;
                    return;
                }
                Err(e) => {
                    crate::warn_limited!(
                        "VFIO: {e}; cannot add MSI-X vector {i} alone, re-enabling every vector"
                    );
                    self.growable = false;
                }
            }
        }
        // A NORESIZE set is re-made whole; the device's interrupts in between are lost,
        // as on QEMU, and this happens once per VM at most (afterwards all are wired).
        if let Err(e) = dev.disable_irq(IrqIndex::Msix) {
            crate::warn_limited!("VFIO: {e}");
        }
        self.wired.fill(false);
        self.wire_all(dev);
    }

    fn wanted(&self, i: usize) -> Option<MsiMessage> {
        let e = self.table.get(i)?;
        let deliver = self.enabled && !self.function_mask && e[3] & VECTOR_MASKED == 0;
        deliver.then_some(MsiMessage {
            address_lo: e[0],
            address_hi: e[1],
            data: e[2],
        })
    }

    fn sync_vector(&mut self, i: usize, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        let want = self.wanted(i);
        if want.is_some() {
            self.wire(i, dev);
        }
        if let Some(Some(v)) = self.vectors.get_mut(i) {
            if let Err(e) = v.sync(want, routing) {
                crate::error_limited!("VFIO: MSI-X vector {i}: {e}");
            }
        }
    }

    fn sync_all(&mut self, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        for i in 0..self.vectors.len() {
            self.sync_vector(i, dev, routing);
        }
    }

    /// A guest read of the table (`offset` from the table start). Accesses of any width
    /// inside the table are served; anything else reads as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !in_range(offset, data.len(), self.cap.table_len()) {
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset + i as u64;
            let (entry, field, byte) = locate(o);
            if let Some(e) = self.table.get(entry) {
                *b = (e[field] >> (byte * 8)) as u8;
            }
        }
    }

    /// A guest write to the table; out-of-range writes are dropped.
    pub fn write_table(
        &mut self,
        offset: u64,
        data: &[u8],
        dev: &dyn VfioDeviceOps,
        routing: &dyn InterruptRouting,
    ) {
        if !in_range(offset, data.len(), self.cap.table_len()) {
            return;
        }
        let mut touched = Vec::with_capacity(1);
        for (i, b) in data.iter().enumerate() {
            let (entry, field, byte) = locate(offset + i as u64);
            if let Some(e) = self.table.get_mut(entry) {
                let shift = byte * 8;
                let mut v = (e[field] & !(0xff << shift)) | ((*b as u32) << shift);
                if field == 3 {
                    // Only the mask bit of vector control is writable.
                    v &= VECTOR_MASKED;
                }
                e[field] = v;
                if !touched.contains(&entry) {
                    touched.push(entry);
                }
            }
        }
        for entry in touched {
            self.sync_vector(entry, dev, routing);
        }
    }

    /// A guest read of the PBA (`offset` from the PBA start): bit i is set while vector i
    /// is masked (its own bit or the function mask, MSI-X enabled) and an interrupt from
    /// the device waits for it. Accesses outside the PBA read as zero.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !in_range(offset, data.len(), self.cap.pba_len()) {
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset + i as u64) * 8;
            for bit in 0..8u64 {
                if usize::try_from(first + bit).is_ok_and(|v| self.pending(v)) {
                    *b |= 1 << bit;
                }
            }
        }
    }

    /// Vector `i` holds an interrupt it may not deliver now.
    fn pending(&self, i: usize) -> bool {
        self.enabled
            && self.wanted(i).is_none()
            && self
                .vectors
                .get(i)
                .is_some_and(|v| v.as_ref().is_some_and(Vector::has_pending))
    }

    /// Quiets every vector, disables MSI-X in VFIO if it was on, frees the GSIs, and
    /// returns to the reset state (disabled, all masked).
    pub fn reset(&mut self, dev: &dyn VfioDeviceOps, routing: &dyn InterruptRouting) {
        for v in self.vectors.iter_mut().flatten() {
            v.release(routing);
        }
        if self.enabled {
            if let Err(e) = dev.disable_irq(IrqIndex::Msix) {
                crate::warn_limited!("VFIO: {e}");
            }
        }
        self.wired.fill(false);
        self.refused = false;
        self.enabled = false;
        self.function_mask = false;
        for e in &mut self.table {
            *e = [0, 0, 0, VECTOR_MASKED];
        }
    }
}

fn in_range(offset: u64, len: usize, size: u64) -> bool {
    len > 0
        && len <= 8
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size)
}

/// (entry, dword field, byte in field) of a table byte offset.
fn locate(o: u64) -> (usize, usize, usize) {
    (
        (o / ENTRY_SIZE) as usize,
        ((o % ENTRY_SIZE) / 4) as usize,
        (o % 4) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::device_fd::IrqInfo;
    use crate::vfio::testing::{DevCall, FakeDevice, RecordingVm, VmCall};

    fn cap(n: u16) -> MsixCap {
        MsixCap {
            offset: 0x70,
            table_size: n,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        }
    }

    fn setup(n: u16) -> (Msix, FakeDevice, RecordingVm) {
        let mut dev = FakeDevice::new(vec![0; 256]);
        dev.irqs.insert(
            IrqIndex::Msix,
            IrqInfo {
                flags: 1,
                count: n as u32,
            },
        );
        (
            Msix::new(
                cap(n),
                IrqInfo {
                    flags: 0,
                    count: n as u32,
                },
            ),
            dev,
            RecordingVm::new(),
        )
    }

    fn program(m: &mut Msix, dev: &FakeDevice, vm: &RecordingVm, i: u64, addr: u32, data: u32) {
        m.write_table(i * 16, &addr.to_le_bytes(), dev, vm);
        m.write_table(i * 16 + 4, &0u32.to_le_bytes(), dev, vm);
        m.write_table(i * 16 + 8, &data.to_le_bytes(), dev, vm);
    }

    #[test]
    fn parses_the_capability() {
        let mut cfg = vec![0u8; 256];
        cfg[0x70..0x74].copy_from_slice(&(0x11u32 | (0x003f << 16)).to_le_bytes());
        cfg[0x74..0x78].copy_from_slice(&0x2000u32.to_le_bytes());
        cfg[0x78..0x7c].copy_from_slice(&0x3002u32.to_le_bytes());
        let c = MsixCap::parse(&cfg, 0x70).unwrap();
        assert_eq!((c.table_size, c.table_bar, c.table_offset), (64, 0, 0x2000));
        assert_eq!(
            (c.pba_bar, c.pba_offset, c.pba_len(), c.table_len()),
            (2, 0x3000, 8, 1024)
        );
        cfg[0x74] = 7; // BIR 7 does not exist
        assert!(MsixCap::parse(&cfg, 0x70).is_none());
        assert!(MsixCap::parse(&cfg, 0xfc).is_none(), "runs off the end");
    }

    fn pba_byte(m: &Msix, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        m.read_pba(offset, &mut b);
        b[0]
    }

    #[test]
    fn pba_shows_interrupts_held_back_by_a_mask() {
        let (mut m, dev, vm) = setup(10);
        m.write_control(CTRL_ENABLE, &dev, &vm);
        program(&mut m, &dev, &vm, 1, 0xfee0_0000, 0x41);
        program(&mut m, &dev, &vm, 9, 0xfee0_0000, 0x49);
        // Used once (unmasked: VFIO wires them), masked again.
        for v in [1u64, 9] {
            m.write_table(v * 16 + 12, &0u32.to_le_bytes(), &dev, &vm);
            m.write_table(v * 16 + 12, &1u32.to_le_bytes(), &dev, &vm);
        }
        // The device signals vectors 1 and 9 while both are masked.
        m.eventfd(1).unwrap().write(1).unwrap();
        m.eventfd(9).unwrap().write(1).unwrap();
        assert_eq!(pba_byte(&m, 0), 0b10, "vector 1 pending");
        assert_eq!(pba_byte(&m, 1), 0b10, "vector 9 pending");
        let mut q = [0u8; 8];
        m.read_pba(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 1 << 1 | 1 << 9, "qword read");
        // Unmasked, vector 1 delivers (KVM drains the eventfd): not pending any more.
        m.write_table(16 + 12, &0u32.to_le_bytes(), &dev, &vm);
        assert_eq!(pba_byte(&m, 0), 0);
        // The function mask holds it back again.
        m.write_control(CTRL_ENABLE | CTRL_FUNCTION_MASK, &dev, &vm);
        assert_eq!(pba_byte(&m, 0), 0b10);
        // Outside the PBA (one qword for 10 vectors): zero.
        let mut b = [0xffu8; 4];
        m.read_pba(16, &mut b);
        assert_eq!(b, [0; 4]);
        m.read_pba(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn pba_is_clear_while_msix_is_disabled() {
        let (mut m, dev, vm) = setup(2);
        m.write_control(CTRL_ENABLE, &dev, &vm);
        m.write_table(12, &0u32.to_le_bytes(), &dev, &vm);
        m.write_table(12, &1u32.to_le_bytes(), &dev, &vm);
        m.write_control(0, &dev, &vm);
        m.eventfd(0).unwrap().write(1).unwrap();
        assert_eq!(pba_byte(&m, 0), 0);
    }

    #[test]
    fn starts_masked_and_disabled_and_routes_nothing() {
        let (mut m, dev, vm) = setup(4);
        assert_eq!(m.control_bits(), 0);
        let mut b = [0u8; 4];
        m.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "vector 0 masked");
        program(&mut m, &dev, &vm, 0, 0xfee0_0000, 0x41);
        m.write_control(CTRL_ENABLE, &dev, &vm);
        assert_eq!(
            dev.calls(),
            vec![DevCall::SetVectors(IrqIndex::Msix, 0, vec![false])],
            "MSI-X on in VFIO with one slot and no eventfd yet"
        );
        assert_eq!(dev.host_irqs(IrqIndex::Msix), 0);
        assert!(m.eventfd(0).is_none(), "no eventfd before first use");
        assert!(
            vm.routes().is_empty() && vm.irqfds().is_empty(),
            "masked vectors stay quiet"
        );
    }

    /// Linux's order: enable with the function mask set, unmask the vectors it
    /// requested, clear the function mask; later masks and unmasks stay in KVM.
    fn linux_enable(m: &mut Msix, dev: &FakeDevice, vm: &RecordingVm, used: u64) {
        m.write_control(CTRL_ENABLE | CTRL_FUNCTION_MASK, dev, vm);
        for i in 0..used {
            program(m, dev, vm, i, 0xfee0_0000, 0x30 + i as u32);
            m.write_table(i * 16 + 12, &0u32.to_le_bytes(), dev, vm);
        }
        m.write_control(CTRL_ENABLE, dev, vm);
    }

    #[test]
    fn a_2048_vector_table_costs_host_irqs_only_for_what_the_guest_uses() {
        let (mut m, dev, vm) = setup(2048);
        linux_enable(&mut m, &dev, &vm, 4);
        assert_eq!(dev.host_irqs(IrqIndex::Msix), 4, "{:?}", dev.calls());
        assert_eq!(m.wired_vectors(), 4);
        assert_eq!(vm.irqfds().len(), 4);
        let set = |c: &DevCall| matches!(c, DevCall::SetVectors(..));
        assert_eq!(
            dev.calls().iter().filter(|c| set(c)).count(),
            5,
            "the enable and one call per first unmask"
        );
        assert!(!dev.calls().iter().any(|c| matches!(c, DevCall::Enable(..))));
        // Masking and unmasking a used vector does not touch VFIO again.
        dev.clear_calls();
        for _ in 0..10 {
            m.write_table(2 * 16 + 12, &1u32.to_le_bytes(), &dev, &vm);
            m.write_table(2 * 16 + 12, &0u32.to_le_bytes(), &dev, &vm);
        }
        assert!(dev.calls().is_empty(), "{:?}", dev.calls());
        // A guest toggling enable gets the vectors it unmasked, in one call each time.
        for _ in 0..3 {
            m.write_control(0, &dev, &vm);
            assert_eq!(dev.host_irqs(IrqIndex::Msix), 0);
            m.write_control(CTRL_ENABLE, &dev, &vm);
        }
        assert_eq!(dev.host_irqs(IrqIndex::Msix), 4);
        assert!(dev
            .calls()
            .contains(&DevCall::SetVectors(IrqIndex::Msix, 0, vec![true; 4])));
        // A hostile guest unmasking every entry gets at most the table's own vectors.
        for i in 0..2048 {
            m.write_table(i * 16 + 12, &0u32.to_le_bytes(), &dev, &vm);
        }
        assert_eq!(dev.host_irqs(IrqIndex::Msix), 2048);
        m.reset(&dev, &vm);
        assert_eq!(dev.host_irqs(IrqIndex::Msix), 0);
        assert_eq!(m.wired_vectors(), 0);
    }

    #[test]
    fn noresize_wires_every_vector_at_enable() {
        let (_, mut dev, vm) = setup(64);
        let info = IrqInfo {
            flags: VFIO_IRQ_INFO_NORESIZE,
            count: 64,
        };
        dev.irqs.insert(IrqIndex::Msix, info);
        let mut m = Msix::new(cap(64), info);
        linux_enable(&mut m, &dev, &vm, 2);
        assert_eq!(dev.calls(), vec![DevCall::Enable(IrqIndex::Msix, 64)]);
        assert_eq!(dev.host_irqs(IrqIndex::Msix), 64);
        assert_eq!(vm.irqfds().len(), 2, "KVM still routes only unmasked ones");
    }

    #[test]
    fn a_kernel_that_cannot_grow_the_set_gets_the_whole_set_once() {
        // VFIO_IRQ_INFO says resizable, the kernel refuses to grow anyway.
        let (_, mut dev, vm) = setup(8);
        dev.irqs.insert(
            IrqIndex::Msix,
            IrqInfo {
                flags: VFIO_IRQ_INFO_NORESIZE,
                count: 8,
            },
        );
        let mut m = Msix::new(cap(8), IrqInfo { flags: 0, count: 8 });
        m.write_control(CTRL_ENABLE, &dev, &vm);
        program(&mut m, &dev, &vm, 3, 0xfee0_0000, 0x33);
        m.write_table(3 * 16 + 12, &0u32.to_le_bytes(), &dev, &vm);
        let calls = dev.calls();
        assert_eq!(
            calls[calls.len() - 2..],
            [
                DevCall::Disable(IrqIndex::Msix),
                DevCall::Enable(IrqIndex::Msix, 8)
            ],
            "{calls:?}"
        );
        assert_eq!(vm.irqfds().len(), 1);
        dev.clear_calls();
        m.write_table(5 * 16 + 12, &0u32.to_le_bytes(), &dev, &vm);
        assert!(dev.calls().is_empty(), "once: every vector is wired now");
    }

    #[test]
    fn unmask_sets_route_before_irqfd_and_mask_reverses_it() {
        let (mut m, dev, vm) = setup(2);
        m.write_control(CTRL_ENABLE, &dev, &vm);
        program(&mut m, &dev, &vm, 1, 0xfee0_1000, 0x42);
        vm.clear();
        m.write_table(16 + 12, &0u32.to_le_bytes(), &dev, &vm); // unmask vector 1
        let msg = MsiMessage {
            address_lo: 0xfee0_1000,
            address_hi: 0,
            data: 0x42,
        };
        assert_eq!(
            vm.calls(),
            vec![
                VmCall::AllocGsi(24),
                VmCall::SetRoute(24, msg),
                VmCall::Irqfd(24)
            ]
        );
        vm.clear();
        m.write_table(16 + 12, &1u32.to_le_bytes(), &dev, &vm); // mask
        assert_eq!(
            vm.calls(),
            vec![VmCall::UnregisterIrqfd(24), VmCall::RemoveRoute(24)]
        );
        vm.clear();
        m.write_table(16 + 12, &0u32.to_le_bytes(), &dev, &vm); // unmask again: same GSI
        assert_eq!(
            vm.calls(),
            vec![VmCall::SetRoute(24, msg), VmCall::Irqfd(24)]
        );
    }

    #[test]
    fn qword_writes_and_live_updates_change_the_route_only() {
        let (mut m, dev, vm) = setup(1);
        m.write_control(CTRL_ENABLE, &dev, &vm);
        let addr = 0x0000_0000_fee0_2000u64;
        m.write_table(0, &addr.to_le_bytes(), &dev, &vm);
        let data_ctrl = 0x43u64; // data 0x43, vector control 0 (unmasked)
        m.write_table(8, &data_ctrl.to_le_bytes(), &dev, &vm);
        assert_eq!(vm.irqfds().len(), 1);
        vm.clear();
        m.write_table(8, &[0x44], &dev, &vm); // byte write of the data field while live
        let msg = MsiMessage {
            address_lo: 0xfee0_2000,
            address_hi: 0,
            data: 0x44,
        };
        assert_eq!(vm.calls(), vec![VmCall::SetRoute(24, msg)]);
        let mut q = [0u8; 8];
        m.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), addr);
    }

    #[test]
    fn function_mask_and_disable_quiet_every_vector_in_order() {
        let (mut m, dev, vm) = setup(2);
        m.write_control(CTRL_ENABLE, &dev, &vm);
        for i in 0..2 {
            program(&mut m, &dev, &vm, i, 0xfee0_0000, 0x50 + i as u32);
            m.write_table(i * 16 + 12, &0u32.to_le_bytes(), &dev, &vm);
        }
        assert_eq!(vm.irqfds().len(), 2);
        vm.clear();
        m.write_control(CTRL_ENABLE | CTRL_FUNCTION_MASK, &dev, &vm);
        assert!(vm.irqfds().is_empty() && vm.routes().is_empty());
        let calls = vm.calls();
        for g in [24, 25] {
            let off = calls
                .iter()
                .position(|c| *c == VmCall::UnregisterIrqfd(g))
                .unwrap();
            let rm = calls
                .iter()
                .position(|c| *c == VmCall::RemoveRoute(g))
                .unwrap();
            assert!(off < rm, "irqfd off before the route goes");
        }
        m.write_control(CTRL_ENABLE, &dev, &vm);
        assert_eq!(vm.irqfds().len(), 2, "function unmask restores");
        dev.clear_calls();
        m.write_control(0, &dev, &vm);
        assert!(vm.irqfds().is_empty());
        assert_eq!(dev.calls(), vec![DevCall::Disable(IrqIndex::Msix)]);
    }

    #[test]
    fn hostile_table_accesses_are_contained() {
        let (mut m, dev, vm) = setup(2);
        let mut b = [0xaau8; 4];
        m.read_table(32, &mut b); // one past the table
        assert_eq!(b, [0; 4]);
        m.read_table(u64::MAX - 1, &mut b);
        m.write_table(u64::MAX - 2, &[1, 2, 3, 4], &dev, &vm);
        m.write_table(30, &[0; 4], &dev, &vm); // straddles the end
        m.write_table(0, &[0; 16], &dev, &vm); // too wide for one access
        m.write_table(12, &0xffff_fffeu32.to_le_bytes(), &dev, &vm); // reserved control bits
        m.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0, "only the mask bit is writable");
        assert!(vm.calls().is_empty(), "disabled: nothing reached KVM");
    }

    #[test]
    fn reset_frees_gsis_and_masks_again() {
        let (mut m, dev, vm) = setup(1);
        m.write_control(CTRL_ENABLE, &dev, &vm);
        program(&mut m, &dev, &vm, 0, 0xfee0_0000, 0x30);
        m.write_table(12, &0u32.to_le_bytes(), &dev, &vm);
        vm.clear();
        m.reset(&dev, &vm);
        assert_eq!(
            vm.calls(),
            vec![
                VmCall::UnregisterIrqfd(24),
                VmCall::RemoveRoute(24),
                VmCall::FreeGsi(24)
            ]
        );
        assert_eq!(m.control_bits(), 0);
        let mut b = [0u8; 4];
        m.read_table(12, &mut b);
        assert_eq!(b[0], 1);
    }
}
