//! Config-space reads and writes: the device's registers overlaid with ours, BAR
//! registers emulated, MSI and MSI-X capabilities routed to their models.

use super::{VfioPciDevice, PM_D3HOT, PM_STATE_MASK};
use crate::pci::bar::{BAR0_OFFSET, NUM_BARS, ROM_BAR_OFFSET};
use crate::pci::config_space::{merge_write, write_lanes, COMMAND, COMMAND_MASTER};
use crate::vfio::device_fd::CONFIG_REGION;

impl VfioPciDevice {
    /// The dword at config offset `off` as the guest reads it.
    pub fn read_config(&self, off: usize) -> u32 {
        if off % 4 != 0 || off >= self.overlay.size() {
            return 0xffff_ffff;
        }
        if (BAR0_OFFSET..BAR0_OFFSET + 4 * NUM_BARS).contains(&off) {
            return self.bar_reg_read((off - BAR0_OFFSET) / 4);
        }
        if off == ROM_BAR_OFFSET {
            return self.rom.as_ref().map_or(0, |r| r.read_reg());
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
            if let Some(r) = self.rom.as_mut() {
                let v = merge_write(r.read_reg(), offset, data);
                r.write_reg(v);
                self.sync_rom();
            }
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
        let mut new_command = (off == COMMAND && write_lanes(offset, data.len()) & 0xffff != 0)
            .then(|| merge_write(self.command as u32, offset, data) as u16);
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        let data = &mut bytes[..data.len()];
        if let Some(new) = new_command.as_mut() {
            if *new & COMMAND_MASTER != 0 && self.command & COMMAND_MASTER == 0 && !self.dma_ready()
            {
                // The mapping failed: the device must not master RAM it cannot reach (the VM
                // is stopping with the mapping's error). The bit is in the register's low
                // byte, which this write carries (it changed the bit).
                *new &= !COMMAND_MASTER;
                data[0] &= !(COMMAND_MASTER as u8);
            }
        }
        let data = &*data;
        // D3hot: vfio-pci revokes the BAR mmaps before the device enters it and restores
        // them after it leaves, as for memory decode: the slots follow the same order.
        let new_d3hot = (Some(off) == self.pmcsr && write_lanes(offset, data.len()) & 0xff != 0)
            .then(|| merge_write(self.read_config(off), offset, data) & PM_STATE_MASK == PM_D3HOT)
            .filter(|&d3| d3 != self.d3hot);
        if new_d3hot == Some(true) {
            self.d3hot = true;
            self.sync_bar_mappings();
        }
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
        if new_d3hot == Some(false) {
            self.d3hot = false;
            self.sync_bar_mappings();
        }
    }

    /// Whether guest RAM is mapped for the device to master, waiting for the mapping when
    /// it still runs ([`crate::vfio::iommu::DmaGate`]); logs how long the write waited.
    fn dma_ready(&self) -> bool {
        let Some(gate) = self.dma.as_ref() else {
            return true;
        };
        let (outcome, waited) = gate.wait_timed();
        match outcome {
            Ok(_) if waited.as_millis() > 0 => {
                log::info!(
                    "{}: bus mastering waited {:.1} ms for the DMA map of {} MiB",
                    self.name,
                    waited.as_secs_f64() * 1000.0,
                    gate.total() >> 20
                );
                true
            }
            Ok(_) => true,
            Err(why) => {
                crate::error_limited!("{}: bus mastering refused: {why}", self.name);
                false
            }
        }
    }
}
