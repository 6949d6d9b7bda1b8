//! `VfioPciDevice`: a host PCI function as the guest sees it.
//!
//! Config space is read from the device through VFIO's config region and overlaid with
//! what must be ours ([`ConfigOverlay`]): the BARs (guest addresses from our allocator),
//! the ROM BAR (hidden), the multi-function bit (masked: each function gets its own
//! slot), the interrupt line, and capabilities the guest must not see (SR-IOV, Resizable
//! BAR, ARI; MSI or MSI-X when VFIO cannot deliver them). MSI and MSI-X capabilities are
//! emulated ([`Msi`], [`Msix`]) and never written to the device.
//!
//! BARs: every mappable area is mmapped once at construction; while the guest has the
//! BAR's decode bit on and a usable address, the areas are KVM slots at that address and
//! the whole BAR is registered as a trap with the VMM (accesses to slot-backed pages never
//! exit, so only the rest arrives here). Moving a decoding BAR or toggling decode moves or
//! drops slots and traps. Trapped accesses go to the emulated MSI-X table/PBA or to
//! VFIO's region read/write, with every offset bounds-checked.
//!
//! Interrupts: one mode at a time. INTx is wired at construction (the state after reset);
//! the guest enabling MSI or MSI-X unwires it first, and disabling both wires it again.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::backend::{IrqIndex, RegionInfo, VfioDeviceOps, CONFIG_REGION};
use super::bars::{mmap_areas, MappedArea, PAGE_SIZE};
use super::intx::Intx;
use super::msi::{Msi, MsiCap};
use super::msix::{Msix, MsixCap};
use super::vm::{AddressSpace, VmOps};
use crate::bus::BusDevice;
use crate::pci::bar::{
    BarAllocError, BarAllocator, BarKind, BarState, BAR0_OFFSET, NUM_BARS, ROM_BAR_OFFSET,
};
use crate::pci::caps::{self, ext_id, id};
use crate::pci::config_space::{
    merge_write, write_lanes, ConfigOverlay, COMMAND, COMMAND_IO, COMMAND_MASTER, COMMAND_MEMORY,
    HEADER_TYPE, HEADER_TYPE_MULTIFUNCTION, INTERRUPT_LINE, INTERRUPT_PIN, PCIE_CONFIG_SIZE,
    PCI_CONFIG_SIZE,
};
use crate::pci::{InterruptRouting, PciDevice};

/// Extended capabilities never shown to the guest.
const HIDDEN_EXT_CAPS: [u16; 3] = [ext_id::SRIOV, ext_id::RESIZABLE_BAR, ext_id::ARI];

/// Building the device model failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// VFIO gave no usable config region.
    #[error(
        "{name}: VFIO reports no readable PCI config space; check that it is a PCI device \
         bound to vfio-pci (or a PCI mdev)"
    )]
    NoConfigSpace {
        /// Device name.
        name: String,
    },
    /// Bridges and unknown header layouts are not supported.
    #[error(
        "{name}: PCI header type {header:#x} is not an endpoint; only endpoint functions \
         (header type 0) can be passed through"
    )]
    NotAnEndpoint {
        /// Device name.
        name: String,
        /// The header-type byte without the multi-function bit.
        header: u8,
    },
    /// A BAR does not fit in the guest's windows.
    #[error("{name}: BAR{index}: {source}")]
    BarPlacement {
        /// Device name.
        name: String,
        /// BAR index.
        index: usize,
        /// Why.
        #[source]
        source: BarAllocError,
    },
    /// An eventfd could not be created.
    #[error("{name}: cannot create an interrupt eventfd ({source}); raise the open-file limit (ulimit -n)")]
    EventFd {
        /// Device name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A BAR as the guest sees it, for logs and for the VMM's resource tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSummary {
    /// BAR index (0-5).
    pub index: usize,
    /// Kind.
    pub kind: BarKind,
    /// Guest address (as currently programmed).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

#[derive(Debug)]
struct Bar {
    index: usize,
    state: BarState,
    initial_addr: u64,
    region: RegionInfo,
    areas: Vec<MappedArea>,
    /// Where the areas are KVM slots (the BAR decodes there).
    mapped_at: Option<u64>,
    /// Where the VMM routes trapped accesses to us (the BAR's last decoding address).
    trap_base: Option<u64>,
    /// MSI-X table and PBA inside this BAR, as (offset, len).
    msix_table: Option<(u64, u64)>,
    msix_pba: Option<(u64, u64)>,
}

impl Bar {
    fn space(&self) -> AddressSpace {
        if self.state.kind.is_io() {
            AddressSpace::Pio
        } else {
            AddressSpace::Mmio
        }
    }
}

/// What the VMM hands a new device: its services and where its resources go.
pub struct DeviceContext<'a> {
    /// Memory slots and bus traps.
    pub vm: Arc<dyn VmOps>,
    /// GSIs, MSI routes, irqfds.
    pub routing: Arc<dyn InterruptRouting>,
    /// The VM's BAR windows.
    pub bars: &'a mut BarAllocator,
    /// The IOAPIC pin for INTx (from the slot and the device's interrupt pin), or `None`
    /// to offer no INTx.
    pub intx_gsi: Option<u32>,
}

/// A VFIO PCI function behind the guest's PCI bus.
pub struct VfioPciDevice {
    name: String,
    dev: Arc<dyn VfioDeviceOps>,
    vm: Arc<dyn VmOps>,
    routing: Arc<dyn InterruptRouting>,
    overlay: ConfigOverlay,
    bars: Vec<Bar>,
    /// `upper_half[i] == Some(j)`: register i is the high dword of 64-bit BAR j.
    upper_half: [Option<usize>; NUM_BARS],
    command: u16,
    msi: Option<Msi>,
    msix: Option<Msix>,
    intx: Option<Intx>,
}

fn rd32(cfg: &[u8], off: usize) -> u32 {
    cfg.get(off..off + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl VfioPciDevice {
    /// Builds the guest's view of an opened VFIO device: resets it, places its BARs,
    /// mmaps what can be mmapped and wires INTx.
    pub fn new(
        name: &str,
        dev: Arc<dyn VfioDeviceOps>,
        ctx: DeviceContext<'_>,
    ) -> Result<Self, DeviceError> {
        let name = name.to_string();
        match dev.reset() {
            Ok(true) => log::info!("{name}: reset"),
            Ok(false) => {
                log::info!("{name}: the device has no reset; the guest gets it as the host left it")
            }
            Err(e) => log::warn!("{name}: {e}"),
        }
        let cfg_info = dev
            .region_info(CONFIG_REGION)
            .filter(|r| r.readable() && r.size >= 0x40)
            .ok_or_else(|| DeviceError::NoConfigSpace { name: name.clone() })?;
        let size = if cfg_info.size >= PCIE_CONFIG_SIZE as u64 {
            PCIE_CONFIG_SIZE
        } else {
            PCI_CONFIG_SIZE
        };
        let mut cfg = vec![0u8; size];
        dev.region_read(
            CONFIG_REGION,
            0,
            &mut cfg[..(cfg_info.size as usize).min(size)],
        );
        let header = cfg[HEADER_TYPE] & !HEADER_TYPE_MULTIFUNCTION;
        if header != 0 {
            return Err(DeviceError::NotAnEndpoint { name, header });
        }

        let mut overlay = ConfigOverlay::new(size);
        overlay.emulate(HEADER_TYPE, (HEADER_TYPE_MULTIFUNCTION as u32) << 16, 0, 0);
        // ROM hidden: passvm boots without firmware, and no guest driver we target needs
        // it; reads of an unreadable host ROM would only give zeros anyway.
        overlay.emulate(ROM_BAR_OFFSET, 0xffff_ffff, 0, 0);

        // Capabilities.
        let std_caps = caps::walk_standard(&cfg);
        let mut hide = Vec::new();
        let eventfd_err = |source| DeviceError::EventFd {
            name: name.clone(),
            source,
        };
        let mut msi = None;
        let mut msix = None;
        let mut msix_cap = None;
        // Even a hidden MSI-X table keeps trapping: mapped, the guest could program the
        // real table with messages of its choosing.
        let mut msix_layout: Option<MsixCap> = None;
        for c in &std_caps {
            match c.id {
                id::MSI => {
                    let count = dev.irq_info(IrqIndex::Msi).map_or(0, |i| i.count);
                    match MsiCap::parse(&cfg, c.offset) {
                        Some(cap) if count > 0 && msi.is_none() => {
                            msi = Some(Msi::new(cap, count).map_err(eventfd_err)?)
                        }
                        _ => hide.push(c.id),
                    }
                }
                id::MSIX => {
                    let count = dev.irq_info(IrqIndex::Msix).map_or(0, |i| i.count);
                    let parsed = MsixCap::parse(&cfg, c.offset);
                    if msix_layout.is_none() {
                        msix_layout = parsed;
                    }
                    match parsed {
                        Some(cap) if count > 0 && msix_cap.is_none() => {
                            msix_cap = Some((cap, count))
                        }
                        _ => hide.push(c.id),
                    }
                }
                _ => {}
            }
        }

        // BARs, largest first so natural alignment wastes little of the windows.
        let mut found = Vec::new();
        let mut upper_half = [None; NUM_BARS];
        let mut i = 0;
        while i < NUM_BARS {
            let raw = rd32(&cfg, BAR0_OFFSET + 4 * i);
            let kind = BarKind::from_register(raw);
            let info = dev.region_info(i as u32).unwrap_or_default();
            if kind.is_64bit() && i + 1 < NUM_BARS {
                upper_half[i + 1] = Some(i);
            }
            if info.size > 0 {
                found.push((i, kind, info));
            }
            i += if kind.is_64bit() { 2 } else { 1 };
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.2.size));
        let mut bars = Vec::new();
        for (index, kind, region) in found {
            let addr = ctx.bars.allocate(kind, region.size).map_err(|source| {
                DeviceError::BarPlacement {
                    name: name.clone(),
                    index,
                    source,
                }
            })?;
            let state = BarState::new(kind, region.size, addr);
            bars.push(Bar {
                index,
                state,
                initial_addr: state.addr,
                region,
                areas: Vec::new(),
                mapped_at: None,
                trap_base: None,
                msix_table: None,
                msix_pba: None,
            });
        }
        bars.sort_by_key(|b| b.index);
        for b in bars.iter_mut() {
            b.trap_base = Self::usable_addr(b);
        }

        // MSI-X needs its table and PBA inside implemented memory BARs.
        let fits = |bars: &[Bar], bir: u8, off: u64, len: u64| {
            bars.iter().any(|b| {
                b.index == bir as usize
                    && !b.state.kind.is_io()
                    && off.checked_add(len).is_some_and(|e| e <= b.region.size)
            })
        };
        if let Some(cap) = msix_layout {
            for b in bars.iter_mut() {
                if b.index == cap.table_bar as usize {
                    b.msix_table = Some((cap.table_offset, cap.table_len()));
                }
                if b.index == cap.pba_bar as usize {
                    b.msix_pba = Some((cap.pba_offset, cap.pba_len()));
                }
            }
        }
        if let Some((cap, count)) = msix_cap {
            if fits(&bars, cap.table_bar, cap.table_offset, cap.table_len())
                && fits(&bars, cap.pba_bar, cap.pba_offset, cap.pba_len())
            {
                msix = Some(Msix::new(cap, count).map_err(eventfd_err)?);
            } else {
                log::warn!("{name}: the MSI-X table or PBA lies outside its BAR; hiding MSI-X");
                hide.push(id::MSIX);
            }
        }
        for p in caps::hide_standard(&std_caps, &hide) {
            overlay.patch(p);
        }
        let ext_caps = caps::walk_extended(&cfg);
        for p in caps::hide_extended(&ext_caps, &HIDDEN_EXT_CAPS) {
            overlay.patch(p);
        }

        // mmap every mappable area once; slots follow the guest's decode and addresses.
        // Read-only or write-only BARs trap: a plain KVM slot over a read-only mapping would
        // make a guest write fail the whole vCPU.
        let mappable =
            |b: &Bar| !b.state.kind.is_io() && b.region.readable() && b.region.writable();
        for b in bars.iter_mut().filter(|b| mappable(b)) {
            let traps: Vec<_> = [b.msix_table, b.msix_pba].into_iter().flatten().collect();
            for area in mmap_areas(&b.region, &traps) {
                match MappedArea::map(dev.mmap_fd(), b.region.offset, area, true) {
                    Ok(m) => b.areas.push(m),
                    Err(e) => log::warn!(
                        "{name}: BAR{} area {:#x}+{:#x} cannot be mmapped ({e}); it will trap",
                        b.index,
                        area.offset,
                        area.size
                    ),
                }
            }
        }

        // INTx.
        let intx_count = dev.irq_info(IrqIndex::Intx).map_or(0, |i| i.count);
        let has_pin = cfg[INTERRUPT_PIN] != 0;
        let mut intx = match ctx.intx_gsi {
            Some(gsi) if intx_count > 0 && has_pin => Some(Intx::new(gsi).map_err(eventfd_err)?),
            _ => None,
        };
        match &intx {
            Some(i) => overlay.emulate(INTERRUPT_LINE, 0xff, i.gsi(), 0xff),
            None => overlay.emulate(INTERRUPT_LINE, 0xffff, 0xff, 0xff),
        }
        if let Some(i) = intx.as_mut() {
            i.enable(dev.as_ref(), ctx.routing.as_ref());
        }

        let command = u16::from_le_bytes([cfg[COMMAND], cfg[COMMAND + 1]]);
        let mut d = Self {
            name,
            dev,
            vm: ctx.vm,
            routing: ctx.routing,
            overlay,
            bars,
            upper_half,
            command,
            msi,
            msix,
            intx,
        };
        // Whatever the host left enabled stays off until the guest's driver enables it.
        d.stop_decode_and_dma();
        d.sync_bar_mappings();
        for b in d.bar_summaries() {
            log::info!(
                "{}: BAR{} {:?} at {:#x} size {:#x}",
                d.name,
                b.index,
                b.kind,
                b.addr,
                b.size
            );
        }
        Ok(d)
    }

    /// The device's name (as given to [`VfioPciDevice::new`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The BARs as the guest currently sees them.
    pub fn bar_summaries(&self) -> Vec<BarSummary> {
        self.bars
            .iter()
            .map(|b| BarSummary {
                index: b.index,
                kind: b.state.kind,
                addr: b.state.addr,
                size: b.state.size,
            })
            .collect()
    }

    /// The `(space, base, len)` ranges whose accesses must reach this device's
    /// `BusDevice`. Right after [`VfioPciDevice::new`] these are the BARs' initial
    /// addresses, and the VMM inserts them on its buses itself (no lock is held then).
    /// Later the device asks for changes through [`VmOps::register_trap`] /
    /// [`VmOps::unregister_trap`], only when the guest makes a BAR decode at a new address
    /// (Linux keeps the addresses it finds, so normally never). A range stays registered
    /// while decoding is off; the device then answers all-ones itself.
    pub fn trapped_ranges(&self) -> Vec<(AddressSpace, u64, u64)> {
        self.bars
            .iter()
            .filter_map(|b| b.trap_base.map(|a| (b.space(), a, b.state.size)))
            .collect()
    }

    /// How many BAR areas are KVM slots right now.
    #[cfg(test)]
    pub(crate) fn mapped_slot_count(&self) -> usize {
        self.bars
            .iter()
            .flat_map(|b| &b.areas)
            .filter(|a| a.slot.is_some())
            .count()
    }

    /// `(BAR index, offset in the BAR, host address)` of every mmapped area.
    #[cfg(test)]
    pub(crate) fn mapped_areas(&self) -> Vec<(usize, u64, u64)> {
        self.bars
            .iter()
            .flat_map(|b| {
                b.areas
                    .iter()
                    .map(move |a| (b.index, a.offset, a.host_addr()))
            })
            .collect()
    }

    /// The MSI-X model, for tests that look inside.
    #[cfg(test)]
    pub(crate) fn msix_model(&self) -> Option<&Msix> {
        self.msix.as_ref()
    }

    /// The interrupt pin (1 = INTA# .. 4 = INTD#) when the device offers INTx.
    pub fn intx_pin(&self) -> Option<u8> {
        self.intx.as_ref()?;
        let pin = (self.read_config(INTERRUPT_LINE) >> 8) as u8;
        (1..=4).contains(&pin).then_some(pin)
    }

    /// The IOAPIC GSI of INTx, if the device offers INTx.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.intx.as_ref().map(|i| i.gsi())
    }

    /// The eventfd the VMM must poll, calling [`VfioPciDevice::handle_intx_eoi`] when it
    /// fires, or `None` when the kernel unmasks INTx by itself (the normal case).
    pub fn intx_eoi_fd(&self) -> Option<&EventFd> {
        self.intx
            .as_ref()
            .filter(|i| i.needs_eoi_poll())
            .map(|i| i.resample_fd())
    }

    /// The guest EOIed the INTx line (see [`VfioPciDevice::intx_eoi_fd`]).
    pub fn handle_intx_eoi(&self) {
        if let Some(i) = &self.intx {
            i.on_eoi(self.dev.as_ref());
        }
    }

    /// Puts the device back in its power-on state for a guest reboot: interrupts off,
    /// slots and traps dropped, device reset, BARs back at their first addresses, INTx
    /// wired again.
    pub fn reset(&mut self) {
        self.quiesce();
        match self.dev.reset() {
            Ok(_) => {}
            Err(e) => log::warn!("{}: {e}", self.name),
        }
        for i in 0..self.bars.len() {
            let b = &mut self.bars[i];
            b.state.addr = b.initial_addr;
            if let Some(a) = Self::usable_addr(b) {
                self.move_trap(i, a);
            }
        }
        let line = self.intx.as_ref().map_or(0xff, |i| i.gsi());
        self.overlay.set(INTERRUPT_LINE, 0xff, line);
        if let Some(i) = self.intx.as_mut() {
            i.enable(self.dev.as_ref(), self.routing.as_ref());
        }
        self.sync_bar_mappings();
    }

    /// Interrupts off and every memory slot dropped (traps stay: see `trapped_ranges`).
    fn quiesce(&mut self) {
        let (dev, routing) = (self.dev.clone(), self.routing.clone());
        if let Some(m) = self.msix.as_mut() {
            m.reset(dev.as_ref(), routing.as_ref());
        }
        if let Some(m) = self.msi.as_mut() {
            m.reset(dev.as_ref(), routing.as_ref());
        }
        if let Some(i) = self.intx.as_mut() {
            i.disable(dev.as_ref(), routing.as_ref());
        }
        for i in 0..self.bars.len() {
            self.unmap_bar(i);
        }
        self.stop_decode_and_dma();
    }

    /// Clears I/O and memory decode and bus mastering in the device: a device without a
    /// reset would otherwise keep DMAing into guest RAM (and answering at old addresses)
    /// across a guest reboot or into the next VM.
    fn stop_decode_and_dma(&mut self) {
        let mut c = [0u8; 2];
        self.dev.region_read(CONFIG_REGION, COMMAND as u64, &mut c);
        let cmd = u16::from_le_bytes(c) & !(COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER);
        self.dev
            .region_write(CONFIG_REGION, COMMAND as u64, &cmd.to_le_bytes());
        self.command = cmd;
    }

    fn decodes(&self, b: &Bar) -> bool {
        let bit = if b.state.kind.is_io() {
            COMMAND_IO
        } else {
            COMMAND_MEMORY
        };
        self.command & bit != 0
    }

    fn usable_addr(b: &Bar) -> Option<u64> {
        let a = b.state.addr;
        let end = a.checked_add(b.state.size)?;
        let limit = if b.state.kind.is_io() {
            1 << 16
        } else {
            u64::MAX
        };
        (a != 0 && end <= limit).then_some(a)
    }

    /// Brings slots and traps in line with the decode bits and BAR addresses.
    fn sync_bar_mappings(&mut self) {
        for i in 0..self.bars.len() {
            let b = &self.bars[i];
            let want = if self.decodes(b) {
                Self::usable_addr(b)
            } else {
                None
            };
            if want != b.mapped_at {
                self.unmap_bar(i);
                if let Some(addr) = want {
                    self.map_bar(i, addr);
                }
            }
        }
    }

    fn map_bar(&mut self, i: usize, addr: u64) {
        let vm = self.vm.clone();
        let b = &mut self.bars[i];
        for a in b.areas.iter_mut() {
            let gpa = addr + a.offset;
            if gpa % PAGE_SIZE != 0 {
                // The guest put a sub-page BAR off a page boundary: no slot, all trapped.
                continue;
            }
            match vm.add_memslot(gpa, a.size, a.host_addr()) {
                Ok(slot) => a.slot = Some(slot),
                Err(e) => log::warn!(
                    "{}: BAR{} at {gpa:#x}: {e}; that area will trap",
                    self.name,
                    b.index
                ),
            }
        }
        b.mapped_at = Some(addr);
        self.move_trap(i, addr);
    }

    /// Points the VMM's trap for BAR `i` at `addr` (no-op when it is already there).
    fn move_trap(&mut self, i: usize, addr: u64) {
        let b = &mut self.bars[i];
        if b.trap_base == Some(addr) {
            return;
        }
        if let Some(old) = b.trap_base.take() {
            if let Err(e) = self.vm.unregister_trap(b.space(), old) {
                log::warn!("{}: BAR{} at {old:#x}: {e}", self.name, b.index);
            }
        }
        match self.vm.register_trap(b.space(), addr, b.state.size) {
            Ok(()) => b.trap_base = Some(addr),
            Err(e) => log::warn!("{}: BAR{} at {addr:#x}: {e}", self.name, b.index),
        }
    }

    fn unmap_bar(&mut self, i: usize) {
        let vm = self.vm.clone();
        let b = &mut self.bars[i];
        if b.mapped_at.take().is_none() {
            return;
        }
        for a in b.areas.iter_mut() {
            if let Some(slot) = a.slot.take() {
                if let Err(e) = vm.remove_memslot(slot) {
                    log::warn!("{}: BAR{}: {e}", self.name, b.index);
                }
            }
        }
    }

    fn bar_reg_read(&self, reg: usize) -> u32 {
        if let Some(b) = self.bars.iter().find(|b| b.index == reg) {
            return b.state.read_low();
        }
        match self.upper_half[reg] {
            Some(j) => self
                .bars
                .iter()
                .find(|b| b.index == j)
                .map_or(0, |b| b.state.read_high()),
            None => 0,
        }
    }

    fn bar_reg_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let value = merge_write(self.bar_reg_read(reg), offset, data);
        if let Some(b) = self.bars.iter_mut().find(|b| b.index == reg) {
            b.state.write_low(value);
        } else if let Some(j) = self.upper_half[reg] {
            if let Some(b) = self.bars.iter_mut().find(|b| b.index == j) {
                b.state.write_high(value);
            }
        } else {
            return;
        }
        self.sync_bar_mappings();
    }

    fn intx_off(&mut self) {
        if let Some(i) = self.intx.as_mut() {
            i.disable(self.dev.as_ref(), self.routing.as_ref());
        }
    }

    fn intx_back_if_idle(&mut self) {
        let msi_on = self.msi.as_ref().is_some_and(|m| m.enabled());
        let msix_on = self.msix.as_ref().is_some_and(|m| m.enabled());
        if !msi_on && !msix_on {
            if let Some(i) = self.intx.as_mut() {
                i.enable(self.dev.as_ref(), self.routing.as_ref());
            }
        }
    }

    /// The dword at config offset `off` as the guest reads it.
    pub fn read_config(&self, off: usize) -> u32 {
        if off % 4 != 0 || off >= self.overlay.size() {
            return 0xffff_ffff;
        }
        if (BAR0_OFFSET..BAR0_OFFSET + 4 * NUM_BARS).contains(&off) {
            return self.bar_reg_read((off - BAR0_OFFSET) / 4);
        }
        let mut hw = [0xffu8; 4];
        self.dev.region_read(CONFIG_REGION, off as u64, &mut hw);
        let mut v = self.overlay.read(off, u32::from_le_bytes(hw));
        if let Some(m) = &self.msi {
            let rel = off.wrapping_sub(m.cap().offset);
            if off >= m.cap().offset && m.contains(rel) {
                v = m.read(rel, v);
            }
        }
        if let Some(m) = &self.msix {
            if off == m.cap().offset {
                v = (v & !0xc000_0000) | ((m.control_bits() as u32) << 16);
            }
        }
        v
    }

    /// A guest write of `data` at byte `offset` of the config dword at `off`.
    pub fn write_config(&mut self, off: usize, offset: usize, data: &[u8]) {
        if data.is_empty()
            || offset >= 4
            || data.len() > 4 - offset
            || off % 4 != 0
            || off >= self.overlay.size()
        {
            return;
        }
        if (BAR0_OFFSET..BAR0_OFFSET + 4 * NUM_BARS).contains(&off) {
            return self.bar_reg_write((off - BAR0_OFFSET) / 4, offset, data);
        }
        if off == ROM_BAR_OFFSET {
            return;
        }
        let (dev, routing) = (self.dev.clone(), self.routing.clone());
        if let Some(cap) = self.msi.as_ref().map(|m| *m.cap()) {
            if off >= cap.offset && off < cap.offset + cap.size() {
                let rel = off - cap.offset;
                let enables = self
                    .msi
                    .as_ref()
                    .is_some_and(|m| m.write_enables(rel, offset, data));
                if enables {
                    self.intx_off();
                }
                if let Some(m) = self.msi.as_mut() {
                    m.write(rel, offset, data, dev.as_ref(), routing.as_ref());
                }
                self.intx_back_if_idle();
                return;
            }
        }
        if let Some(cap_off) = self.msix.as_ref().map(|m| m.cap().offset) {
            if off == cap_off {
                if write_lanes(offset, data.len()) & 0xffff_0000 == 0 {
                    return; // ID and next pointer are read-only
                }
                let ctrl = (merge_write(self.read_config(off), offset, data) >> 16) as u16;
                if self.msix.as_ref().is_some_and(|m| m.would_enable(ctrl)) {
                    self.intx_off();
                }
                if let Some(m) = self.msix.as_mut() {
                    m.write_control(ctrl, dev.as_ref(), routing.as_ref());
                }
                self.intx_back_if_idle();
                return;
            }
            if off > cap_off && off < cap_off + 12 {
                return; // table and PBA offsets are read-only
            }
        }
        let new_command = (off == COMMAND && write_lanes(offset, data.len()) & 0xffff != 0)
            .then(|| merge_write(self.command as u32, offset, data) as u16);
        if let Some(new) = new_command {
            // Slots go before the device stops decoding and come after it starts: vfio-pci
            // revokes BAR mmaps while decode is off, and a guest access through a slot
            // then would fail the vCPU instead of reading all-ones.
            self.command &= new;
            self.sync_bar_mappings();
        }
        for (o, bytes) in self.overlay.write(off, offset, data) {
            self.dev.region_write(CONFIG_REGION, o as u64, &bytes);
        }
        if let Some(new) = new_command {
            self.command = new;
            self.sync_bar_mappings();
        }
    }

    /// The BAR that decodes at `base` right now (a registered range whose BAR has
    /// decoding off, or has moved on, answers like an empty bus).
    fn bar_at(&self, base: u64) -> Option<usize> {
        self.bars
            .iter()
            .position(|b| b.trap_base == Some(base) && b.mapped_at == Some(base))
    }

    fn bar_read(&self, i: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let b = &self.bars[i];
        let len = data.len() as u64;
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        if len == 0 || len > 8 || end > b.state.size {
            return;
        }
        if let (Some((t, tl)), Some(m)) = (b.msix_table, &self.msix) {
            if offset >= t && offset < t + tl {
                return m.read_table(offset - t, data);
            }
        }
        if let (Some((p, pl)), Some(m)) = (b.msix_pba, &self.msix) {
            if offset >= p && offset < p + pl {
                return m.read_pba(offset - p, data);
            }
        }
        if end <= b.region.size {
            self.dev.region_read(b.index as u32, offset, data);
        }
    }

    fn bar_write(&mut self, i: usize, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let b = &self.bars[i];
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        if len == 0 || len > 8 || end > b.state.size {
            return;
        }
        let (index, region_size) = (b.index as u32, b.region.size);
        if let Some((t, tl)) = b.msix_table {
            if offset >= t && offset < t + tl {
                let routing = self.routing.clone();
                if let Some(m) = self.msix.as_mut() {
                    m.write_table(offset - t, data, routing.as_ref());
                }
                return;
            }
        }
        if let Some((p, pl)) = b.msix_pba {
            if offset >= p && offset < p + pl {
                return; // the PBA is read-only
            }
        }
        if end <= region_size {
            self.dev.region_write(index, offset, data);
        }
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        reg_idx
            .checked_mul(4)
            .map_or(0xffff_ffff, |off| self.read_config(off))
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        if let (Some(off), Ok(offset)) = (reg_idx.checked_mul(4), usize::try_from(offset)) {
            self.write_config(off, offset, data);
        }
    }
}

impl BusDevice for VfioPciDevice {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        match self.bar_at(base) {
            Some(i) => self.bar_read(i, offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if let Some(i) = self.bar_at(base) {
            self.bar_write(i, offset, data);
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.quiesce();
        for b in &mut self.bars {
            b.areas.clear(); // munmap before the device fd can go
        }
        // Leave the device clean for the next user.
        if let Err(e) = self.dev.reset() {
            log::warn!("{}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::bar::{Window, DEFAULT_MMIO64_LIMIT};
    use crate::pci::MsiMessage;
    use crate::vfio::backend::{IrqInfo, MmapArea};
    use crate::vfio::testing::{DevCall, FakeDevice, RecordingVm, VmCall};

    const RW_MMAP: u32 = 0x7;

    fn put32(cfg: &mut [u8], off: usize, v: u32) {
        cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A PCIe endpoint: BAR0/1 64-bit prefetchable 64 KiB with the MSI-X table at 0x2000
    /// and PBA at 0x3000; BAR2 I/O 32 bytes; BAR3 32-bit 256 bytes; a ROM; MSI (64-bit,
    /// per-vector mask) at 0x50, MSI-X (4 vectors) at 0x70, PCIe at 0x90; SR-IOV hidden
    /// at 0x100 between nothing and AER at 0x140.
    fn fake() -> FakeDevice {
        let mut cfg = vec![0u8; 4096];
        put32(&mut cfg, 0, 0x1001_1af4);
        put32(&mut cfg, 4, 0x0010_0000); // status: capability list
        cfg[HEADER_TYPE] = 0x80; // multi-function on the host
        put32(&mut cfg, 0x10, 0x0000_000c);
        put32(&mut cfg, 0x18, 0x0000_0001);
        put32(&mut cfg, 0x1c, 0x0000_0000);
        put32(&mut cfg, 0x30, 0xfeb8_0000);
        cfg[0x34] = 0x50;
        cfg[INTERRUPT_PIN] = 1;
        put32(&mut cfg, 0x50, 0x0180_7005); // MSI, next 0x70, 64-bit + PVM
        put32(&mut cfg, 0x70, 0x0003_9011); // MSI-X, next 0x90, 4 entries
        put32(&mut cfg, 0x74, 0x2000);
        put32(&mut cfg, 0x78, 0x3000);
        put32(&mut cfg, 0x90, 0x0002_0010); // PCIe
        put32(&mut cfg, 0x100, 0x1401_0010); // SR-IOV -> 0x140
        put32(&mut cfg, 0x140, 0x0001_0001); // AER, end
        let mut d = FakeDevice::new(cfg);
        let reg = |size, flags, offset| RegionInfo {
            flags,
            size,
            offset,
            ..Default::default()
        };
        d.add_region(0, reg(0x10000, RW_MMAP, 0), vec![0x5a; 0x10000]);
        d.add_region(2, reg(0x20, 0x3, 0x10000), vec![0x11; 0x20]);
        d.add_region(3, reg(0x100, RW_MMAP, 0x11000), vec![0x22; 0x100]);
        d.add_region(6, reg(0x8000, 0x1, 0x12000), vec![0x55; 0x8000]);
        d.irqs
            .insert(IrqIndex::Intx, IrqInfo { flags: 7, count: 1 });
        d.irqs.insert(IrqIndex::Msi, IrqInfo { flags: 9, count: 1 });
        d.irqs
            .insert(IrqIndex::Msix, IrqInfo { flags: 9, count: 4 });
        d
    }

    fn allocator() -> BarAllocator {
        BarAllocator::new(
            Some(Window {
                base: 0xc000_0000,
                size: 0x1000_0000,
            }),
            Some(Window {
                base: 1 << 35,
                size: 1 << 35,
            }),
            Some(Window {
                base: 0xc000,
                size: 0x1000,
            }),
            DEFAULT_MMIO64_LIMIT,
        )
    }

    fn build(d: FakeDevice) -> (VfioPciDevice, Arc<FakeDevice>, Arc<RecordingVm>) {
        let d = Arc::new(d);
        let vm = Arc::new(RecordingVm::new());
        let mut a = allocator();
        let ctx = DeviceContext {
            vm: vm.clone(),
            routing: vm.clone(),
            bars: &mut a,
            intx_gsi: Some(10),
        };
        let dev = VfioPciDevice::new("test", d.clone(), ctx).unwrap();
        (dev, d, vm)
    }

    fn w(dev: &mut VfioPciDevice, off: usize, v: u32) {
        dev.write_config(off, 0, &v.to_le_bytes());
    }

    #[test]
    fn bars_are_placed_sized_and_encoded() {
        let (mut dev, _d, _vm) = build(fake());
        let bar0 = dev.read_config(0x10);
        assert_eq!(bar0 & 0xf, 0xc, "64-bit prefetchable kept");
        let addr0 = (bar0 & !0xf) as u64 | ((dev.read_config(0x14) as u64) << 32);
        assert!(
            addr0 >= 1 << 35 && addr0 % 0x10000 == 0,
            "64-bit window, naturally aligned"
        );
        w(&mut dev, 0x10, 0xffff_ffff);
        w(&mut dev, 0x14, 0xffff_ffff);
        assert_eq!(dev.read_config(0x10), 0xffff_000c);
        assert_eq!(dev.read_config(0x14), 0xffff_ffff);
        assert_eq!(dev.read_config(0x18) & 0x3, 0x1, "I/O BAR");
        assert!((0xc000..0xd000).contains(&(dev.read_config(0x18) & !0x3)));
        w(&mut dev, 0x18, 0xffff_ffff);
        assert_eq!(dev.read_config(0x18), 0xffff_ffe1, "32 bytes of ports");
        let bar3 = dev.read_config(0x1c);
        assert_eq!(bar3 & 0xf, 0, "32-bit non-prefetchable");
        assert_eq!(bar3 % 4096, 0, "a sub-page BAR still owns a page");
        assert_eq!(dev.read_config(0x20), 0, "unimplemented BAR4");
        w(&mut dev, 0x20, 0xffff_ffff);
        assert_eq!(dev.read_config(0x20), 0);
        w(&mut dev, 0x30, 0xffff_ffff);
        assert_eq!(dev.read_config(0x30), 0, "ROM hidden");
    }

    #[test]
    fn config_shadowing_rules() {
        let (mut dev, d, _vm) = build(fake());
        assert_eq!(dev.read_config(0), 0x1001_1af4, "IDs from the device");
        assert_eq!(
            (dev.read_config(0x0c) >> 16) & 0x80,
            0,
            "multi-function masked"
        );
        assert_eq!(
            dev.read_config(0x3c) & 0xffff,
            0x010a,
            "pin from device, line = GSI"
        );
        // Ext caps: SR-IOV at the head becomes a null capability; AER still reachable.
        let head = dev.read_config(0x100);
        assert_eq!(head & 0xffff, 0);
        assert_eq!(head >> 20, 0x140);
        // BAR writes never reach the device; other writes do.
        d.clear_calls();
        w(&mut dev, 0x10, 0xffff_ffff);
        dev.write_config(0x30, 0, &[0xff]);
        assert!(d.calls().is_empty());
        dev.write_config(0x0c, 1, &[0x40]); // latency timer
        assert_eq!(
            d.calls(),
            vec![DevCall::RegionWrite(CONFIG_REGION, 0x0d, vec![0x40])]
        );
        // Interrupt line is ours and writable, never forwarded.
        d.clear_calls();
        dev.write_config(0x3c, 0, &[0x0b]);
        assert_eq!(dev.read_config(0x3c) & 0xff, 0x0b);
        assert!(d.calls().is_empty());
    }

    #[test]
    fn hostile_config_accesses_are_harmless() {
        let (mut dev, _d, _vm) = build(fake());
        assert_eq!(dev.read_config_register(usize::MAX), 0xffff_ffff);
        assert_eq!(dev.read_config_register(1024), 0xffff_ffff);
        dev.write_config_register(usize::MAX, 0, &[1]);
        dev.write_config_register(4, 3, &[1, 2]); // runs past the dword
        dev.write_config_register(4, u64::MAX, &[1]);
        dev.write_config_register(4, 0, &[]);
        dev.write_config_register(4, 0, &[1, 2, 3, 4, 5]);
        assert_eq!(dev.read_config(0x10) & 0xf, 0xc);
    }

    #[test]
    fn memory_decode_maps_areas_around_the_msix_pages_and_follows_moves() {
        let (mut dev, _d, vm) = build(fake());
        assert!(vm.slots().is_empty(), "decode is off after reset");
        let bar0 = dev.bar_summaries()[0].addr;
        let bar3 = dev.bar_summaries()[2].addr;
        dev.write_config(COMMAND, 0, &[0x03]);
        let slots = vm.slots();
        let got: Vec<_> = slots.iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(
            got,
            vec![(bar3, 0x1000), (bar0, 0x2000), (bar0 + 0x4000, 0xc000)]
        );
        let io = dev.bar_summaries()[1].addr;
        let traps = dev.trapped_ranges();
        assert!(
            traps.contains(&(AddressSpace::Mmio, bar0, 0x10000)),
            "VMM registers these"
        );
        assert!(traps.contains(&(AddressSpace::Pio, io, 0x20)));
        assert!(
            !vm.calls().iter().any(|c| matches!(c, VmCall::Trap(..))),
            "not asked again"
        );
        // Move BAR0 while decoding: old slots go, new ones come at the new address.
        vm.clear();
        let new = bar0 + 0x100_0000;
        w(&mut dev, 0x10, new as u32 | 0xc);
        w(&mut dev, 0x14, (new >> 32) as u32);
        let got: Vec<_> = vm.slots().iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(
            got,
            vec![(bar3, 0x1000), (new, 0x2000), (new + 0x4000, 0xc000)]
        );
        let c = vm.calls();
        let un = c
            .iter()
            .position(|c| *c == VmCall::Untrap(AddressSpace::Mmio, bar0))
            .unwrap();
        let re = c
            .iter()
            .position(|c| *c == VmCall::Trap(AddressSpace::Mmio, new, 0x10000))
            .unwrap();
        assert!(un < re);
        assert!(dev
            .trapped_ranges()
            .contains(&(AddressSpace::Mmio, new, 0x10000)));
        // Memory decode off: every MMIO slot goes; the traps stay but answer all-ones.
        dev.write_config(COMMAND, 0, &[0x01]);
        assert!(vm.slots().is_empty());
        let mut b = [0u8; 4];
        BusDevice::read(&mut dev, new, 0x2800, &mut b);
        assert_eq!(b, [0xff; 4], "no decode, no answer");
        BusDevice::read(&mut dev, io, 0, &mut b);
        assert_eq!(b, [0x11; 4], "I/O still decodes");
    }

    #[test]
    fn sizing_with_decode_on_does_not_map_at_garbage() {
        let (mut dev, _d, vm) = build(fake());
        dev.write_config(COMMAND, 0, &[0x01]); // I/O decode only
        w(&mut dev, 0x18, 0xffff_ffff);
        // 0xffffffe0 does not fit 16-bit ports: the trap is not moved there, and the old
        // range stops answering.
        let io = dev.trapped_ranges()[1].1;
        assert!(vm.calls().iter().all(|c| !matches!(c, VmCall::Trap(..))));
        let mut b = [0u8; 2];
        BusDevice::read(&mut dev, io, 0, &mut b);
        assert_eq!(b, [0xff; 2]);
    }

    #[test]
    fn trapped_bar_accesses_reach_the_region_or_the_emulated_table() {
        let (mut dev, d, _vm) = build(fake());
        dev.write_config(COMMAND, 0, &[0x03]);
        let bar0 = dev.bar_summaries()[0].addr;
        let mut b = [0u8; 4];
        BusDevice::read(&mut dev, bar0, 0x200c, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "MSI-X vector 0 starts masked");
        BusDevice::read(&mut dev, bar0, 0x3000, &mut b);
        assert_eq!(b, [0; 4], "PBA");
        BusDevice::read(&mut dev, bar0, 0x2800, &mut b);
        assert_eq!(
            b, [0x5a; 4],
            "rest of the carved page comes from the region"
        );
        BusDevice::read(&mut dev, bar0, 0xfffe, &mut b);
        assert_eq!(b, [0xff; 4], "straddles the end of the BAR");
        BusDevice::read(&mut dev, bar0, u64::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
        BusDevice::read(&mut dev, 0x1234, 0, &mut b);
        assert_eq!(b, [0xff; 4], "not one of our BARs");
        d.clear_calls();
        BusDevice::write(&mut dev, bar0, 0x2804, &[1, 2, 3, 4]);
        BusDevice::write(&mut dev, bar0, 0x3000, &[1]); // PBA is read-only
        BusDevice::write(&mut dev, bar0, 0x10000, &[1]);
        assert_eq!(
            d.calls(),
            vec![DevCall::RegionWrite(0, 0x2804, vec![1, 2, 3, 4])]
        );
        let io = dev.bar_summaries()[1].addr;
        BusDevice::read(&mut dev, io, 4, &mut b);
        assert_eq!(b, [0x11; 4], "I/O BAR through the region");
    }

    #[test]
    fn msix_enable_turns_intx_off_first_and_routes_on_unmask() {
        let (mut dev, d, vm) = build(fake());
        assert!(vm.irqfds().contains(&10), "INTx wired at start");
        dev.write_config(COMMAND, 0, &[0x02]);
        let bar0 = dev.bar_summaries()[0].addr;
        d.clear_calls();
        // Dword write at cap+0: enable with the function mask set, then clear it.
        w(&mut dev, 0x70, 0xc000_0000);
        assert_eq!(
            d.calls(),
            vec![
                DevCall::Disable(IrqIndex::Intx),
                DevCall::Enable(IrqIndex::Msix, 4)
            ]
        );
        assert_eq!(
            dev.read_config(0x70) >> 16,
            0xc003,
            "enable + mask read back with table size"
        );
        assert!(!vm.irqfds().contains(&10));
        BusDevice::write(&mut dev, bar0, 0x2010, &0xfee0_0000u32.to_le_bytes());
        BusDevice::write(&mut dev, bar0, 0x2018, &0x31u32.to_le_bytes());
        BusDevice::write(&mut dev, bar0, 0x201c, &0u32.to_le_bytes());
        assert!(vm.routes().is_empty(), "function mask still set");
        dev.write_config(0x70, 3, &[0x80]); // byte write: clear function mask
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x31,
        };
        assert_eq!(vm.routes().values().copied().collect::<Vec<_>>(), vec![msg]);
        // Disabling MSI-X brings INTx back.
        d.clear_calls();
        dev.write_config(0x70, 2, &[0x03, 0x00]);
        assert_eq!(d.calls()[0], DevCall::Disable(IrqIndex::Msix));
        assert!(vm.irqfds().contains(&10));
        assert!(vm.routes().is_empty());
    }

    #[test]
    fn msi_enable_through_config_space() {
        let (mut dev, d, vm) = build(fake());
        w(&mut dev, 0x54, 0xfee0_0000);
        w(&mut dev, 0x58, 0);
        w(&mut dev, 0x5c, 0x25);
        d.clear_calls();
        dev.write_config(0x50, 2, &[0x01, 0x01]);
        assert_eq!(
            d.calls(),
            vec![
                DevCall::Disable(IrqIndex::Intx),
                DevCall::Enable(IrqIndex::Msi, 1)
            ]
        );
        assert_eq!(vm.routes().len(), 1);
        assert_eq!(
            dev.read_config(0x50) & 0xffff,
            0x7005,
            "ID/next from the device"
        );
        assert!(
            d.calls()
                .iter()
                .all(|c| !matches!(c, DevCall::RegionWrite(..))),
            "never written to hw"
        );
    }

    #[test]
    fn sparse_and_unmappable_regions() {
        let mut f = fake();
        let info = RegionInfo {
            flags: RW_MMAP,
            size: 0x10000,
            offset: 0,
            sparse_areas: Some(vec![MmapArea {
                offset: 0x8000,
                size: 0x8000,
            }]),
            msix_mappable: false,
        };
        f.add_region(0, info, vec![0; 0x10000]);
        let (mut dev, _d, vm) = build(f);
        dev.write_config(COMMAND, 0, &[0x02]);
        let bar0 = dev.bar_summaries()[0].addr;
        assert!(vm
            .slots()
            .iter()
            .any(|s| (s.0, s.1) == (bar0 + 0x8000, 0x8000)));
        assert_eq!(
            vm.slots()
                .iter()
                .filter(|s| s.0 >= bar0 && s.0 < bar0 + 0x10000)
                .count(),
            1
        );
    }

    #[test]
    fn missing_interrupts_hide_their_capabilities() {
        let mut f = fake();
        f.irqs.remove(&IrqIndex::Msi);
        f.irqs.remove(&IrqIndex::Intx);
        let (dev, _d, vm) = build(f);
        assert_eq!(
            dev.read_config(0x34) & 0xff,
            0x70,
            "MSI unlinked from the head"
        );
        assert_eq!(dev.read_config(0x3c) >> 8 & 0xff, 0, "no interrupt pin");
        assert!(vm.calls().is_empty(), "no INTx wiring");
        assert!(dev.intx_gsi().is_none());
    }

    #[test]
    fn a_hidden_msix_table_still_traps_and_read_only_bars_are_not_mapped() {
        let mut f = fake();
        f.irqs.remove(&IrqIndex::Msix);
        let ro = RegionInfo {
            flags: 0x5,
            size: 0x100,
            offset: 0x11000,
            ..Default::default()
        };
        f.add_region(3, ro, vec![0x22; 0x100]); // readable + mmap, not writable
        let (mut dev, _d, vm) = build(f);
        assert_eq!(dev.read_config(0x50) >> 8 & 0xff, 0x90, "MSI-X unlinked");
        dev.write_config(COMMAND, 0, &[0x02]);
        let bar0 = dev.bar_summaries()[0].addr;
        let got: Vec<_> = vm.slots().iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(
            got,
            vec![(bar0, 0x2000), (bar0 + 0x4000, 0xc000)],
            "table pages carved, BAR3 traps"
        );
        let mut b = [0u8; 4];
        BusDevice::read(&mut dev, bar0, 0x2000, &mut b);
        assert_eq!(
            b, [0x5a; 4],
            "no emulation: the region answers (vfio-pci blocks the real table)"
        );
    }

    /// A guest doing random config writes and BAR accesses never panics passvm, and the
    /// KVM state stays consistent: every irqfd has a route, every slot lies in a BAR.
    #[test]
    fn random_hostile_guest_cannot_break_the_model() {
        let (mut dev, _d, vm) = build(fake());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let interesting = [
            0x04usize, 0x10, 0x14, 0x18, 0x1c, 0x30, 0x3c, 0x50, 0x54, 0x58, 0x5c, 0x60, 0x70,
            0x74, 0x100,
        ];
        for _ in 0..50_000 {
            let r = next();
            let len = (r >> 8) as usize % 6;
            let data: Vec<u8> = (0..len).map(|i| (r >> (16 + i * 8)) as u8).collect();
            match r % 4 {
                0 => {
                    let reg = if r & 0x100 != 0 {
                        interesting[(r >> 32) as usize % interesting.len()] / 4
                    } else {
                        (r >> 32) as usize % 1100
                    };
                    dev.write_config_register(reg, (r >> 40) % 5, &data);
                }
                1 => {
                    dev.read_config_register((r >> 32) as usize % 1100);
                }
                2 | 3 => {
                    let bars = dev.bar_summaries();
                    let base = match (r >> 32) % 5 {
                        4 => next(),
                        i => bars[i as usize % bars.len()].addr,
                    };
                    let offset = if r & 0x200 != 0 {
                        next()
                    } else {
                        (r >> 44) % 0x11000
                    };
                    if r % 4 == 2 {
                        let mut buf = vec![0u8; len.max(1) + (r as usize >> 60) % 4];
                        BusDevice::read(&mut dev, base, offset, &mut buf);
                    } else {
                        BusDevice::write(&mut dev, base, offset, &data);
                    }
                }
                _ => unreachable!(),
            }
        }
        let routes = vm.routes();
        assert!(vm
            .irqfds()
            .iter()
            .all(|g| *g < 24 || routes.contains_key(g)));
        let calls = vm.calls();
        let count = |f: fn(&VmCall) -> bool| calls.iter().filter(|c| f(c)).count();
        // The walk really reached the interesting paths (seeded, so this is stable).
        assert!(count(|c| matches!(c, VmCall::AddSlot { .. })) > 0);
        assert!(count(|c| matches!(c, VmCall::SetRoute(..))) > 0);
        assert!(count(|c| matches!(c, VmCall::Irqfd(..))) > 0);
        assert!(count(|c| matches!(c, VmCall::Trap(..))) > 0);
        let bars = dev.bar_summaries();
        for (gpa, size, _) in vm.slots() {
            assert!(bars
                .iter()
                .any(|b| gpa >= b.addr && gpa + size <= b.addr + b.size.max(4096)));
        }
        drop(dev);
        assert!(vm.slots().is_empty() && vm.irqfds().is_empty() && vm.routes().is_empty());
    }

    #[test]
    fn slots_leave_before_the_device_stops_decoding_and_come_after_it_starts() {
        let (mut dev, d, vm) = build(fake());
        d.watch_slots(vm.clone());
        dev.write_config(COMMAND, 0, &[0x02]);
        let slots_on = vm.slots().len();
        assert!(slots_on > 0);
        assert_eq!(
            d.slots_seen_at_last_write(),
            Some(0),
            "slots only after decode is on"
        );
        dev.write_config(COMMAND, 0, &[0x00]);
        assert_eq!(
            d.slots_seen_at_last_write(),
            Some(0),
            "no slot left when decode goes off"
        );
        assert!(vm.slots().is_empty());
    }

    #[test]
    fn a_device_without_reset_still_stops_dma_on_reboot_and_at_start() {
        let mut f = fake();
        f.flags = 0; // no VFIO_DEVICE_FLAGS_RESET
                     // The host left memory decode and bus mastering on.
        f.regions[&CONFIG_REGION].1.lock().unwrap()[4] = 0x06;
        let (mut dev, d, vm) = build(f);
        assert_eq!(d.config_command() & 0x7, 0, "off before the guest runs");
        assert!(vm.slots().is_empty());
        dev.write_config(COMMAND, 0, &[0x06]);
        assert_eq!(d.config_command() & 0x7, 0x6);
        d.clear_calls();
        dev.reset();
        assert_eq!(
            d.config_command() & 0x7,
            0,
            "bus master off across the reboot"
        );
        let calls = d.calls();
        let off = calls
            .iter()
            .position(|c| matches!(c, DevCall::RegionWrite(CONFIG_REGION, 4, _)));
        let reset = calls.iter().position(|c| *c == DevCall::Reset);
        assert!(
            off.unwrap() < reset.unwrap(),
            "DMA stopped before the (no-op) reset"
        );
        assert!(
            vm.slots().is_empty(),
            "no decode after reboot until the guest enables it"
        );
    }

    #[test]
    fn bridges_and_missing_config_are_refused_with_reasons() {
        let mut cfg = vec![0u8; 256];
        cfg[HEADER_TYPE] = 0x01;
        let vm = Arc::new(RecordingVm::new());
        let mut a = allocator();
        let ctx = DeviceContext {
            vm: vm.clone(),
            routing: vm.clone(),
            bars: &mut a,
            intx_gsi: None,
        };
        let e = VfioPciDevice::new("br", Arc::new(FakeDevice::new(cfg)), ctx)
            .err()
            .unwrap();
        assert!(e.to_string().contains("only endpoint"), "{e}");
        let mut tiny = BarAllocator::new(None, None, None, DEFAULT_MMIO64_LIMIT);
        let ctx = DeviceContext {
            vm: vm.clone(),
            routing: vm,
            bars: &mut tiny,
            intx_gsi: None,
        };
        let e = VfioPciDevice::new("nospace", Arc::new(fake()), ctx)
            .err()
            .unwrap();
        assert!(e.to_string().contains("larger"), "{e}");
    }

    #[test]
    fn reset_and_drop_release_everything() {
        let (mut dev, d, vm) = build(fake());
        dev.write_config(COMMAND, 0, &[0x03]);
        w(&mut dev, 0x70, 0x8000_0000);
        let bar0 = dev.bar_summaries()[0].addr;
        BusDevice::write(&mut dev, bar0, 0x200c, &0u32.to_le_bytes());
        assert_eq!(vm.irqfds().len(), 1);
        w(&mut dev, 0x10, 0xd000_000c); // guest moved it
        dev.write_config(0x3c, 0, &[0x05]);
        d.clear_calls();
        dev.reset();
        assert!(vm.slots().is_empty() && vm.routes().is_empty());
        assert!(d.calls().contains(&DevCall::Reset));
        assert_eq!(
            dev.bar_summaries()[0].addr,
            bar0,
            "BAR back at its first address"
        );
        assert!(vm.irqfds().contains(&10), "INTx wired again");
        assert_eq!(
            dev.read_config(0x3c) & 0xff,
            10,
            "interrupt line back to the GSI"
        );
        assert!(vm.calls().contains(&VmCall::FreeGsi(24)));
        dev.write_config(COMMAND, 0, &[0x02]);
        assert!(!vm.slots().is_empty());
        d.clear_calls();
        drop(dev);
        assert!(vm.slots().is_empty() && vm.irqfds().is_empty());
        assert_eq!(d.calls().last(), Some(&DevCall::Reset));
    }

    #[test]
    fn intx_fallback_exposes_the_eoi_fd() {
        let mut f = fake();
        f.unmask_fd_unsupported = true;
        let (dev, d, _vm) = build(f);
        let fd = dev.intx_eoi_fd().expect("VMM must poll");
        fd.write(1).unwrap();
        d.clear_calls();
        dev.handle_intx_eoi();
        assert_eq!(d.calls(), vec![DevCall::UnmaskIntx]);
        let (dev, _d, _vm) = build(fake());
        assert!(dev.intx_eoi_fd().is_none());
    }
}
