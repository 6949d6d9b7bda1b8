//! Just enough of the i8042 keyboard controller for a guest to reset the machine.
//!
//! Linux's `reboot=k` (and its default fallback) writes command 0xFE ("pulse the reset line")
//! to port 0x64. There is no keyboard or mouse behind it; status reads return 0 (both
//! buffers empty), which is what the kernel's wait loops need to move on.

use std::fmt;

use vm_superio::{I8042Device, Trigger};

use crate::bus::BusDevice;

/// First port of the controller (data port; command/status is at +4).
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64 (0x61 is the PIT's speaker port, which KVM's in-kernel PIT claims first).
pub const I8042_PORTS: u64 = 5;

/// Called when the guest pulls the reset line.
pub type ResetHandler = Box<dyn Fn() + Send>;

struct ResetTrigger(ResetHandler);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)();
        Ok(())
    }
}

/// The controller as a bus device.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl fmt::Debug for I8042 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("I8042")
    }
}

impl I8042 {
    /// A controller that calls `on_reset` synchronously, on the vCPU thread doing the write,
    /// so the VMM records the reset before that vCPU can run another instruction (Linux follows
    /// a failed keyboard reset with a deliberate triple fault).
    pub fn new(on_reset: ResetHandler) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(on_reset)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset).map_or(0xff, |o| self.inner.read(o));
        data.fill(v);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            // The trigger is infallible.
            let _ = self.inner.write(off, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn reset_command_on_0x64_calls_the_handler() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let mut kbd = I8042::new(Box::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        let mut status = [0xaa];
        kbd.read(I8042_BASE, 4, &mut status);
        assert_eq!(status[0], 0, "input and output buffers empty");
        kbd.write(I8042_BASE, 0, &[0xfe]); // data port: not a command
        kbd.write(I8042_BASE, 4, &[0xad]); // disable keyboard: ignored
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        kbd.write(I8042_BASE, 4, &[0xfe]);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
