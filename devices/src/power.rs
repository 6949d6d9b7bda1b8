//! The VM's power controls, as the FADT of a hardware-reduced ACPI platform describes
//! them: a sleep control register, a sleep status register and a reset register, three
//! byte-wide ports the VMM's ACPI tables point at (src/acpi/).
//!
//! A guest powers off by writing `SLP_TYP | SLP_EN` to the sleep control register, with
//! the `SLP_TYP` its DSDT's `\_S5` package names; it resets by writing the FADT's reset
//! value to the reset register (Linux's default reboot method when the FADT offers one).
//! Only S5 exists: a write naming another sleep type (S1-S4 are not offered in the DSDT)
//! is ignored, so the guest's call returns and it falls back to its next method.
//!
//! The other way round, the VMM asks the guest to shut down by pressing its power button
//! ([`PowerButton`]): the DSDT's Generic Event Device (ACPI0013) takes an edge on
//! [`POWER_BUTTON_GSI`] and notifies the button device (PNP0C0C), which Linux turns into a
//! KEY_POWER input event for its userspace (systemd-logind, acpid) to act on.

use std::fmt;

use crate::bus::BusDevice;

/// First port of the block: sleep control, then sleep status, then reset.
pub const POWER_BASE: u64 = 0x600;
/// Sleep control, sleep status, reset.
pub const POWER_PORTS: u64 = 3;
/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the reset register.
pub const RESET: u64 = 2;
/// What the guest writes to the reset register to reset (the FADT's `RESET_VALUE`).
pub const RESET_VALUE: u8 = 1;
/// The `SLP_TYP` of S5 (soft off), as the DSDT's `\_S5` package gives it.
pub const S5_SLP_TYP: u8 = 5;

/// `SLP_EN`: the write starts the transition (ACPI 6.5, 4.8.3.7).
const SLP_EN: u8 = 1 << 5;
/// `SLP_TYP`, bits 2-4.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;

/// The IOAPIC pin the Generic Event Device's interrupt comes in on (an ISA pin passvm
/// leaves free: edge-triggered, active-high by default).
pub const POWER_BUTTON_GSI: u32 = 5;

/// The guest's power button, pressed from the VMM side (a signal, later an API).
#[derive(Debug)]
pub struct PowerButton {
    irq: vmm_sys_util::eventfd::EventFd,
}

impl PowerButton {
    /// The button whose presses go out through `irq`, a KVM irqfd on
    /// [`POWER_BUTTON_GSI`].
    pub fn new(irq: vmm_sys_util::eventfd::EventFd) -> Self {
        Self { irq }
    }

    /// Presses the button once: one edge on the GED's interrupt.
    pub fn press(&self) -> std::io::Result<()> {
        self.irq.write(1)
    }
}

/// Called when the guest powers off or resets.
pub type PowerHandler = Box<dyn Fn() + Send>;

/// The three registers as one port-I/O device.
pub struct PowerControls {
    on_poweroff: PowerHandler,
    on_reset: PowerHandler,
}

impl fmt::Debug for PowerControls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerControls").finish_non_exhaustive()
    }
}

impl PowerControls {
    /// The registers, calling `on_poweroff` for S5 and `on_reset` for a reset.
    pub fn new(on_poweroff: PowerHandler, on_reset: PowerHandler) -> Self {
        Self {
            on_poweroff,
            on_reset,
        }
    }
}

impl BusDevice for PowerControls {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Nothing is latched: sleep control reads back 0, and sleep status never has
        // WAK_STS, as no sleep state is ever entered and left.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // Byte registers: a wider access writes its low byte to the register it starts at.
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL => {
                let slp_typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                if value & SLP_EN != 0 && slp_typ == S5_SLP_TYP {
                    (self.on_poweroff)();
                } else if value & SLP_EN != 0 {
                    crate::warn_limited!(
                        "guest asked for sleep type {slp_typ}, which this VM does not offer; ignored"
                    );
                }
            }
            RESET if value == RESET_VALUE => (self.on_reset)(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn controls() -> (PowerControls, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (off, reset) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, r) = (off.clone(), reset.clone());
        let c = PowerControls::new(
            Box::new(move || {
                o.fetch_add(1, Ordering::SeqCst);
            }),
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (c, off, reset)
    }

    #[test]
    fn s5_with_slp_en_powers_off_and_nothing_else_does() {
        let (mut c, off, reset) = controls();
        c.write(POWER_BASE, SLEEP_CONTROL, &[S5_SLP_TYP << 2]);
        assert_eq!(off.load(Ordering::SeqCst), 0, "SLP_TYP without SLP_EN");
        c.write(POWER_BASE, SLEEP_CONTROL, &[(3 << 2) | SLP_EN]);
        assert_eq!(off.load(Ordering::SeqCst), 0, "S3 is not offered");
        c.write(POWER_BASE, SLEEP_STATUS, &[0xff]);
        c.write(POWER_BASE, SLEEP_CONTROL, &[]);
        assert_eq!(off.load(Ordering::SeqCst), 0);
        // Linux's acpi_hw_extended_sleep: (SLP_TYP << 2) | SLP_EN, one byte.
        c.write(POWER_BASE, SLEEP_CONTROL, &[0x34]);
        assert_eq!(off.load(Ordering::SeqCst), 1);
        assert_eq!(reset.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_reset_value_resets_and_other_values_do_not() {
        let (mut c, off, reset) = controls();
        c.write(POWER_BASE, RESET, &[0x06]);
        assert_eq!(reset.load(Ordering::SeqCst), 0);
        c.write(POWER_BASE, RESET, &[RESET_VALUE, 0xff]);
        assert_eq!(reset.load(Ordering::SeqCst), 1);
        assert_eq!(off.load(Ordering::SeqCst), 0);
        let mut b = [0xaa; 2];
        c.read(POWER_BASE, SLEEP_STATUS, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
