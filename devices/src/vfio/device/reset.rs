//! Reset and teardown: interrupts off, slots dropped, decode and DMA stopped.

use super::VfioPciDevice;
use crate::pci::config_space::{
    COMMAND, COMMAND_IO, COMMAND_MASTER, COMMAND_MEMORY, INTERRUPT_LINE,
};
use crate::vfio::device_fd::{HotReset, VfioDeviceOps, CONFIG_REGION};

/// Resets a function: with its own reset (FLR, PM, or the bus reset the kernel does for
/// a function alone below its bridge) when VFIO offers one, else with a hot reset of its
/// bus or slot when every function there is this VM's (a GPU and its audio function).
/// A function reset that fails also falls back to the hot reset: the kernel fixes a
/// function's reset methods when it finds it, so the first function of a slot may be
/// offered the bus reset it loses as soon as its siblings appear.
pub(super) fn reset_function(name: &str, dev: &dyn VfioDeviceOps) {
    let why = match dev.reset() {
        Ok(true) => return log::info!("{name}: reset"),
        Ok(false) => "no reset of its own".to_string(),
        Err(e) => format!("{e}"),
    };
    match dev.hot_reset() {
        HotReset::Done(functions) => log::info!("{name}: {why}; reset its bus ({functions})"),
        HotReset::Unavailable => {
            log::info!("{name}: {why} and no bus reset; the guest gets it as the host left it")
        }
        HotReset::Refused(refused) => log::warn!(
            "{name}: {why} and no bus reset ({refused}); the device keeps the state the \
             host or the last guest left; pass every function of its bus to this VM to \
             allow one"
        ),
    }
}

impl VfioPciDevice {
    /// Puts the device back in its power-on state for a guest reboot: interrupts off,
    /// slots and traps dropped, device reset, BARs back at their first addresses, INTx
    /// wired again.
    pub fn reset(&mut self) {
        self.quiesce();
        reset_function(&self.name, self.dev.as_ref());
        // A reset device is in D0.
        self.d3hot = false;
        for i in 0..self.bars.len() {
            let b = &mut self.bars[i];
            b.state.addr = b.initial_addr;
            if let Some(a) = Self::usable_addr(b) {
                self.move_trap(i, a);
            }
        }
        if let Some(r) = self.rom.as_mut() {
            r.reset();
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
    pub(super) fn stop_decode_and_dma(&mut self) {
        let mut c = [0u8; 2];
        self.dev.region_read(CONFIG_REGION, COMMAND as u64, &mut c);
        let cmd = u16::from_le_bytes(c) & !(COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER);
        self.dev
            .region_write(CONFIG_REGION, COMMAND as u64, &cmd.to_le_bytes());
        self.command = cmd;
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.quiesce();
        for b in &mut self.bars {
            b.areas.clear(); // munmap before the device fd can go
        }
        // Leave the device clean for the next user.
        reset_function(&self.name, self.dev.as_ref());
    }
}
