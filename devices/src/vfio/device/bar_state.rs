//! BAR glue: where each BAR decodes, its KVM slots and VMM traps following the guest's
//! decode bits and BAR writes, and trapped accesses routed to the MSI-X model or VFIO.
//! (Which parts of a BAR can be mmapped at all is [`crate::vfio::bars`].)

use super::{BarSummary, VfioPciDevice};
use crate::pci::bar::BarState;
use crate::pci::config_space::{merge_write, COMMAND_IO, COMMAND_MEMORY};
use crate::size::PAGE_SIZE;
use crate::vfio::device::bar_mmap::MappedArea;
use crate::vfio::device_fd::RegionInfo;
use crate::vfio::vm::AddressSpace;
#[cfg(doc)]
use crate::vfio::vm::VmOps;

#[derive(Debug)]
pub(super) struct Bar {
    pub(super) index: usize,
    pub(super) state: BarState,
    pub(super) initial_addr: u64,
    pub(super) region: RegionInfo,
    pub(super) areas: Vec<MappedArea>,
    /// Where the areas are KVM slots (the BAR decodes there).
    pub(super) mapped_at: Option<u64>,
    /// Where the VMM routes trapped accesses to us (the BAR's last decoding address).
    pub(super) trap_base: Option<u64>,
    /// MSI-X table and PBA inside this BAR, as (offset, len).
    pub(super) msix_table: Option<(u64, u64)>,
    pub(super) msix_pba: Option<(u64, u64)>,
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

impl VfioPciDevice {
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

    fn decodes(&self, b: &Bar) -> bool {
        let bit = if b.state.kind.is_io() {
            COMMAND_IO
        } else {
            COMMAND_MEMORY
        };
        self.command & bit != 0 && !self.d3hot
    }

    /// Whether memory BARs (and the ROM) decode: memory decode on, not in D3hot.
    fn memory_decodes(&self) -> bool {
        self.command & COMMAND_MEMORY != 0 && !self.d3hot
    }

    pub(super) fn usable_addr(b: &Bar) -> Option<u64> {
        let a = b.state.addr;
        let end = a.checked_add(b.state.size)?;
        let limit = if b.state.kind.is_io() {
            1 << 16
        } else {
            u64::MAX
        };
        (a != 0 && end <= limit).then_some(a)
    }

    /// Whether the ROM decodes at `base` right now.
    pub(super) fn rom_at(&self, base: u64) -> bool {
        let memory_on = self.memory_decodes();
        self.rom
            .as_ref()
            .is_some_and(|r| r.trap_base == Some(base) && r.decoding_at(memory_on) == Some(base))
    }

    /// Puts the ROM's trap where it decodes (or nowhere when it does not).
    pub(super) fn sync_rom(&mut self) {
        let memory_on = self.memory_decodes();
        let Some(r) = self.rom.as_mut() else {
            return;
        };
        let want = r.decoding_at(memory_on);
        if want == r.trap_base {
            return;
        }
        if let Some(old) = r.trap_base.take() {
            if let Err(e) = self.vm.unregister_trap(AddressSpace::Mmio, old) {
                crate::warn_limited!("{}: ROM at {old:#x}: {e}", self.name);
            }
        }
        if let Some(addr) = want {
            match self.vm.register_trap(AddressSpace::Mmio, addr, r.size()) {
                Ok(()) => r.trap_base = Some(addr),
                Err(e) => crate::warn_limited!("{}: ROM at {addr:#x}: {e}", self.name),
            }
        }
    }

    /// Brings slots and traps in line with the decode bits and BAR addresses.
    pub(super) fn sync_bar_mappings(&mut self) {
        self.sync_rom();
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

    /// Makes BAR `i` decode at `addr`: its range first (the VM refuses one that would
    /// cover RAM, the platform, another device or lie outside the windows), then its
    /// slots inside it. A refused BAR stays unplaced until the guest moves it again: its
    /// accesses reach nothing, which breaks only this device.
    fn map_bar(&mut self, i: usize, addr: u64) {
        self.bars[i].mapped_at = Some(addr);
        self.move_trap(i, addr);
        if self.bars[i].trap_base != Some(addr) {
            return;
        }
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
                Err(e) => crate::warn_limited!(
                    "{}: BAR{} at {gpa:#x}: {e}; that area will trap",
                    self.name,
                    b.index
                ),
            }
        }
    }

    /// Points the VMM's trap for BAR `i` at `addr` (no-op when it is already there).
    pub(super) fn move_trap(&mut self, i: usize, addr: u64) {
        let b = &mut self.bars[i];
        if b.trap_base == Some(addr) {
            return;
        }
        if let Some(old) = b.trap_base.take() {
            if let Err(e) = self.vm.unregister_trap(b.space(), old) {
                crate::warn_limited!("{}: BAR{} at {old:#x}: {e}", self.name, b.index);
            }
        }
        match self.vm.register_trap(b.space(), addr, b.state.size) {
            Ok(()) => b.trap_base = Some(addr),
            Err(e) => crate::warn_limited!(
                "{}: BAR{} cannot decode at {addr:#x}: {e}; it stays unmapped until the guest \
                 moves it",
                self.name,
                b.index
            ),
        }
    }

    pub(super) fn unmap_bar(&mut self, i: usize) {
        let vm = self.vm.clone();
        let b = &mut self.bars[i];
        if b.mapped_at.take().is_none() {
            return;
        }
        for a in b.areas.iter_mut() {
            if let Some(slot) = a.slot.take() {
                if let Err(e) = vm.remove_memslot(slot) {
                    crate::warn_limited!("{}: BAR{}: {e}", self.name, b.index);
                }
            }
        }
    }

    pub(super) fn bar_reg_read(&self, reg: usize) -> u32 {
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

    pub(super) fn bar_reg_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
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

    /// The BAR that decodes at `base` right now (a registered range whose BAR has
    /// decoding off, or has moved on, answers like an empty bus).
    pub(super) fn bar_at(&self, base: u64) -> Option<usize> {
        self.bars
            .iter()
            .position(|b| b.trap_base == Some(base) && b.mapped_at == Some(base))
    }

    pub(super) fn bar_read(&self, i: usize, offset: u64, data: &mut [u8]) {
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

    pub(super) fn bar_write(&mut self, i: usize, offset: u64, data: &[u8]) {
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
                let (dev, routing) = (self.dev.clone(), self.routing.clone());
                if let Some(m) = self.msix.as_mut() {
                    m.write_table(offset - t, data, dev.as_ref(), routing.as_ref());
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
