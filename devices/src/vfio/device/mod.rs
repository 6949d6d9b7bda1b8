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
//!
//! The code is split by concern: `config` shadows config space, `bar_state` follows the
//! BARs' decode and addresses, `interrupts` switches between INTx, MSI and MSI-X, and
//! `reset` brings the device back to its power-on state.

pub(crate) mod bar_mmap;
mod bar_state;
mod config;
mod error_signal;
mod interrupts;
pub(crate) mod intx;
pub(crate) mod msi;
pub(crate) mod msix;
mod reset;
pub mod rom;
#[cfg(test)]
pub(crate) mod tests;
mod vector;

use std::sync::Arc;

use super::device_fd::{IrqIndex, VfioDeviceOps, CONFIG_REGION};
use super::iommu::DmaGate;
use super::vm::VmOps;
use crate::bus::BusDevice;
use crate::pci::bar::{
    BarAllocError, BarAllocator, BarKind, BarState, BAR0_OFFSET, NUM_BARS, ROM_BAR_OFFSET,
};
use crate::pci::caps::{self, ext_id, id};
use crate::pci::config_space::{
    ConfigOverlay, COMMAND, HEADER_TYPE, HEADER_TYPE_MULTIFUNCTION, INTERRUPT_LINE, INTERRUPT_PIN,
    PCIE_CONFIG_SIZE, PCI_CONFIG_SIZE,
};
use crate::pci::{InterruptRouting, PciDevice};
use bar_mmap::{mmap_areas, MappedArea};
use bar_state::Bar;
use error_signal::ErrorSignal;
use intx::Intx;
use msi::{Msi, MsiCap};
use msix::{Msix, MsixCap};
use rom::Rom;
pub use rom::RomImage;

/// Extended capabilities never shown to the guest.
/// PMCSR's offset in the power-management capability.
const PMCSR_OFFSET: usize = 4;
/// PMCSR's PowerState field and its D3hot value.
const PM_STATE_MASK: u32 = 0x3;
const PM_D3HOT: u32 = 0x3;

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

/// What the VMM hands a new device: its services and where its resources go.
pub struct DeviceContext<'a> {
    /// Memory slots and bus traps.
    pub vm: Arc<dyn VmOps>,
    /// GSIs, MSI routes, irqfds.
    pub routing: Arc<dyn InterruptRouting>,
    /// The VM's BAR windows.
    pub bars: &'a mut BarAllocator,
    /// What the expansion ROM BAR shows.
    pub rom: RomImage,
    /// Whether its slot holds other functions too (the header's multifunction bit).
    pub multifunction: bool,
    /// The IOAPIC pin for INTx (from the slot and the device's interrupt pin), or `None`
    /// to offer no INTx.
    pub intx_gsi: Option<u32>,
    /// The guest RAM map, which the guest's Bus Master Enable waits for while it runs
    /// beside the boot ([`DmaGate`]); `None` when nothing needs waiting for.
    pub dma: Option<Arc<DmaGate>>,
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
    /// The expansion ROM BAR, when the guest gets one.
    rom: Option<Rom>,
    /// See [`DeviceContext::dma`].
    dma: Option<Arc<DmaGate>>,
    /// The power-management control/status register (PMCSR), when the device has PM.
    pmcsr: Option<usize>,
    /// The guest put the device in D3hot: vfio-pci revokes its BAR mmaps then, so its
    /// slots are down (as with memory decode off) and BAR accesses read all-ones.
    d3hot: bool,
    /// Where VFIO signals the device's errors (AER), when it can.
    error: Option<ErrorSignal>,
    /// Where VFIO signals that the host wants the device back, when it can.
    request: Option<ErrorSignal>,
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
        reset::reset_function(&name, dev.as_ref());
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
        // The multifunction bit says what the guest's slot holds, not the host's.
        let mf = (HEADER_TYPE_MULTIFUNCTION as u32) << 16;
        overlay.emulate(HEADER_TYPE, mf, if ctx.multifunction { mf } else { 0 }, 0);
        // The ROM BAR is ours (rom.rs); without a ROM it reads 0, the "not implemented"
        // answer.
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
                    let info = dev.irq_info(IrqIndex::Msix).unwrap_or_default();
                    let parsed = MsixCap::parse(&cfg, c.offset);
                    if msix_layout.is_none() {
                        msix_layout = parsed;
                    }
                    match parsed {
                        Some(cap) if info.count > 0 && msix_cap.is_none() => {
                            msix_cap = Some((cap, info))
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

        // After the BARs: the ROM is small and only decodes while the guest reads it.
        let bars_alloc = &mut *ctx.bars;
        let rom = Rom::new(&name, &ctx.rom, dev.as_ref(), |size| {
            bars_alloc
                .allocate(
                    BarKind::Mem32 {
                        prefetchable: false,
                    },
                    size,
                )
                .ok()
        });

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
        if let Some((cap, info)) = msix_cap {
            if fits(&bars, cap.table_bar, cap.table_offset, cap.table_len())
                && fits(&bars, cap.pba_bar, cap.pba_offset, cap.pba_len())
            {
                msix = Some(Msix::new(cap, info));
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
        let pmcsr = std_caps
            .iter()
            .find(|c| c.id == id::PM)
            .map(|c| c.offset + PMCSR_OFFSET)
            .filter(|&o| o + 4 <= PCI_CONFIG_SIZE);
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
            rom,
            dma: ctx.dma,
            pmcsr,
            d3hot: false,
            error: None,
            request: None,
        };
        d.error = ErrorSignal::wire(&d.name, d.dev.as_ref());
        d.request = ErrorSignal::wire_index(&d.name, d.dev.as_ref(), IrqIndex::Req);
        // Whatever the host left enabled stays off until the guest's driver enables it.
        d.stop_decode_and_dma();
        d.sync_bar_mappings();
        if let Some(r) = &d.rom {
            log::info!(
                "{}: ROM at {:#x} size {:#x}",
                d.name,
                r.read_reg(),
                r.size()
            );
        }
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
        if self.rom_at(base) {
            if let Some(r) = &self.rom {
                r.read(self.dev.as_ref(), offset, data);
            }
            return;
        }
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
