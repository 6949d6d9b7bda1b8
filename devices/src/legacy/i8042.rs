//! The i8042 keyboard controller, with no keyboard behind it: enough for a guest to reset
//! the machine and to get through Linux's controller probe without timeouts.
//!
//! * Reset: command 0xFE on port 0x64 ("pulse the reset line", Linux's `reboot=k`), or an
//!   output-port write with bit 0 clear, calls the reset handler.
//! * Probe: without ACPI telling it otherwise, Linux probes the controller directly and reads
//!   the control register (command 0x20). A controller that never answers costs the guest
//!   over two seconds of boot in timeouts ("Can't read CTR while initializing i8042"), so the
//!   controller commands Linux uses are answered: read/write CTR, self tests, port
//!   enable/disable, read/write output port. Keyboard commands on port 0x60 are ACKed (and
//!   "reset" and "get ID" answered like an AT keyboard), so the guest's keyboard driver also
//!   probes quickly; no key is ever pressed. The AUX (mouse) port is not emulated: keep
//!   `i8042.noaux` on the guest command line.
//! * Bytes for the guest raise IRQ 1 (through the given eventfd, a KVM irqfd) when the guest
//!   enabled keyboard interrupts in the CTR, as the real controller does.

use std::collections::VecDeque;
use std::fmt;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// First port of the controller (data port; command/status is at +4).
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..=0x64 (0x61 is the PIT's speaker port, which KVM's in-kernel PIT claims first).
pub const I8042_PORTS: u64 = 5;
/// The keyboard's ISA IRQ (and GSI).
pub const I8042_KBD_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register.
const SR_OBF: u8 = 0x01;
const SR_SYS: u8 = 0x04;
const SR_CMD: u8 = 0x08;
const SR_UNLOCKED: u8 = 0x10;

// Control register (CTR).
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Output port.
const OUTP_RESET: u8 = 0x01; // active low: clearing it resets the CPU
const OUTP_A20: u8 = 0x02;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Bytes the guest has not read yet; a real controller holds one, keyboards a few more.
const OUT_MAX: usize = 16;

/// Called when the guest pulls the reset line.
pub type ResetHandler = Box<dyn Fn() + Send>;

/// The controller as a bus device.
pub struct I8042 {
    on_reset: ResetHandler,
    irq: EventFd,
    ctr: u8,
    outp: u8,
    last_write_was_command: bool,
    /// A controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    out: VecDeque<u8>,
}

impl fmt::Debug for I8042 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042")
            .field("ctr", &self.ctr)
            .field("pending", &self.pending)
            .field("out", &self.out)
            .finish()
    }
}

impl I8042 {
    /// A controller that raises `irq` for IRQ 1 and calls `on_reset` synchronously, on the
    /// vCPU thread doing the write, so the VMM records the reset before that vCPU can run
    /// another instruction (Linux follows a failed keyboard reset with a triple fault).
    pub fn new(on_reset: ResetHandler, irq: EventFd) -> Self {
        Self {
            on_reset,
            irq,
            ctr: CTR_KBD_INT | CTR_SYS | CTR_XLATE | CTR_AUX_DISABLE,
            outp: OUTP_RESET | OUTP_A20,
            last_write_was_command: false,
            pending: None,
            out: VecDeque::new(),
        }
    }

    fn status(&self) -> u8 {
        let mut s = SR_SYS | SR_UNLOCKED;
        if !self.out.is_empty() {
            s |= SR_OBF;
        }
        if self.last_write_was_command {
            s |= SR_CMD;
        }
        s
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.out.len() < OUT_MAX {
                self.out.push_back(b);
            }
        }
        if self.ctr & CTR_KBD_INT != 0 && !bytes.is_empty() {
            if let Err(e) = self.irq.write(1) {
                crate::warn_limited!("i8042: cannot raise IRQ 1: {e}");
            }
        }
    }

    fn command(&mut self, cmd: u8) {
        match cmd {
            0x20 => self.push(&[self.ctr]),
            0x60 | 0xd1 | 0xd2 | 0xd3 | 0xd4 => self.pending = Some(cmd),
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            0xaa => self.push(&[0x55]), // controller self test passed
            0xab => self.push(&[0x00]), // keyboard interface test passed
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => self.ctr &= !CTR_KBD_DISABLE,
            0xd0 => self.push(&[self.outp]),
            // 0xF0-0xFF pulse output-port lines low; bit 0 is the CPU reset line.
            0xf0..=0xff if cmd & OUTP_RESET == 0 => (self.on_reset)(),
            _ => log::debug!("i8042: command {cmd:#04x} ignored"),
        }
    }

    fn data(&mut self, value: u8) {
        match self.pending.take() {
            Some(0x60) => self.ctr = value,
            Some(0xd1) => {
                self.outp = value;
                if value & OUTP_RESET == 0 {
                    (self.on_reset)();
                }
            }
            Some(0xd2) => self.push(&[value]), // as if the keyboard had sent it
            Some(_) => {}                      // AUX: no mouse behind the port
            None => self.keyboard(value),
        }
    }

    /// A byte for the keyboard itself: answered like an AT keyboard that has no keys.
    fn keyboard(&mut self, cmd: u8) {
        match cmd {
            0xff => self.push(&[KBD_ACK, KBD_BAT_OK]),
            0xf2 => self.push(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            0xee => self.push(&[0xee]),
            _ => self.push(&[KBD_ACK]),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match offset {
            DATA => self.out.pop_front().unwrap_or(0),
            COMMAND => self.status(),
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            DATA => {
                self.last_write_was_command = false;
                self.data(*value);
            }
            COMMAND => {
                self.last_write_was_command = true;
                self.command(*value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn kbd() -> (I8042, Arc<AtomicUsize>, EventFd) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = I8042::new(
            Box::new(move || {
                h.fetch_add(1, Ordering::SeqCst);
            }),
            irq.try_clone().unwrap(),
        );
        (dev, hits, irq)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0];
        d.read(I8042_BASE, off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_on_0x64_calls_the_handler() {
        let (mut d, hits, _) = kbd();
        assert_eq!(
            rd(&mut d, COMMAND) & (SR_OBF | 0x02),
            0,
            "both buffers empty"
        );
        d.write(I8042_BASE, DATA, &[0xfe]); // a keyboard byte, not a command
        d.write(I8042_BASE, COMMAND, &[0xad]);
        d.write(I8042_BASE, COMMAND, &[0xff]); // pulse nothing
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        d.write(I8042_BASE, COMMAND, &[0xfe]);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn output_port_write_with_reset_bit_clear_resets() {
        let (mut d, hits, _) = kbd();
        d.write(I8042_BASE, COMMAND, &[0xd1]);
        d.write(I8042_BASE, DATA, &[OUTP_RESET | OUTP_A20]);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        d.write(I8042_BASE, COMMAND, &[0xd1]);
        d.write(I8042_BASE, DATA, &[OUTP_A20]);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    /// The sequence Linux's i8042_controller_init uses: read the CTR (polling the status
    /// register for OBF), write it back changed, read it again.
    #[test]
    fn linux_reads_and_writes_the_ctr() {
        let (mut d, _, irq) = kbd();
        d.write(I8042_BASE, COMMAND, &[0x20]);
        assert_ne!(rd(&mut d, COMMAND) & SR_OBF, 0, "reply waiting");
        let ctr = rd(&mut d, DATA);
        assert_eq!(ctr & CTR_KBD_INT, CTR_KBD_INT);
        assert_eq!(rd(&mut d, COMMAND) & SR_OBF, 0, "reply consumed");
        assert_eq!(irq.read().unwrap(), 1, "KBD_INT on: the reply raised IRQ 1");

        d.write(I8042_BASE, COMMAND, &[0x60]);
        d.write(I8042_BASE, DATA, &[ctr & !CTR_KBD_INT]);
        d.write(I8042_BASE, COMMAND, &[0x20]);
        assert_eq!(rd(&mut d, DATA), ctr & !CTR_KBD_INT);
        assert!(irq.read().is_err(), "KBD_INT off: no interrupt");

        d.write(I8042_BASE, COMMAND, &[0xaa]);
        assert_eq!(rd(&mut d, DATA), 0x55, "self test passed");
        d.write(I8042_BASE, COMMAND, &[0xab]);
        assert_eq!(rd(&mut d, DATA), 0x00, "interface test passed");
    }

    #[test]
    fn keyboard_commands_are_acked_like_an_at_keyboard() {
        let (mut d, _, _) = kbd();
        d.write(I8042_BASE, DATA, &[0xf2]);
        let reply: Vec<u8> = (0..3).map(|_| rd(&mut d, DATA)).collect();
        assert_eq!(reply, [KBD_ACK, 0xab, 0x83]);
        d.write(I8042_BASE, DATA, &[0xed]); // set LEDs
        assert_eq!(rd(&mut d, DATA), KBD_ACK);
        d.write(I8042_BASE, DATA, &[0x00]); // the LED byte
        assert_eq!(rd(&mut d, DATA), KBD_ACK);
        assert_eq!(rd(&mut d, COMMAND) & SR_OBF, 0);
    }
}
