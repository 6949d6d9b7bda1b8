//! The 8250/16550A UART (COM1) on top of vm-superio.
//!
//! The interrupt line is an [`EventFd`] that the VMM registers as a KVM irqfd on the UART's
//! GSI (4 for COM1), so raising it never leaves the kernel's fast path. Guest output goes to
//! any `Write`; host input is queued with [`Serial::enqueue_input`], and the device signals
//! [`Serial::input_space_evt`] whenever the guest has drained its receive FIFO, so the VMM
//! can feed more without polling.

use std::io::{self, Write};

use vm_superio::serial::SerialEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

/// COM1's I/O base.
pub const COM1_BASE: u64 = 0x3f8;
/// Ports a UART decodes.
pub const UART_PORTS: u64 = 8;
/// COM1's ISA IRQ (and GSI).
pub const COM1_IRQ: u32 = 4;

/// Raises the UART interrupt by writing its irqfd.
#[derive(Debug)]
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the VMM that the receive FIFO has room again.
#[derive(Debug)]
pub struct InputSpace(EventFd);

impl SerialEvents for InputSpace {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.0.write(1) {
            crate::warn_limited!("serial: cannot signal input space: {e}");
        }
    }
}

/// Destination of guest output.
pub type SerialOutput = Box<dyn Write + Send>;

/// COM1 as a bus device.
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, InputSpace, SerialOutput>,
}

impl Serial {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: EventFd, out: SerialOutput) -> io::Result<Self> {
        let space = InputSpace(EventFd::new(EFD_NONBLOCK)?);
        Ok(Self {
            uart: vm_superio::Serial::with_events(IrqTrigger(irq), space, out),
        })
    }

    /// Signalled each time the guest empties the receive FIFO.
    pub fn input_space_evt(&self) -> &EventFd {
        &self.uart.events().0
    }

    /// Queues host input for the guest; returns how many bytes fitted in the FIFO (the
    /// caller keeps the rest until [`Serial::input_space_evt`] fires).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                crate::warn_limited!("serial: input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // A UART register is one byte wide; wider accesses read consecutive registers.
        for (i, b) in data.iter_mut().enumerate() {
            *b = match u8::try_from(offset + i as u64) {
                Ok(off) if u64::from(off) < UART_PORTS => self.uart.read(off),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Ok(off) = u8::try_from(offset + i as u64) {
                if u64::from(off) < UART_PORTS {
                    // Output errors (a closed stdout, a full disk) must not stop the guest.
                    if let Err(e) = self.uart.write(off, b) {
                        log::debug!("serial: {e:?}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;

    #[test]
    fn output_reaches_the_writer_and_raises_thre() {
        let out = Shared::default();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(out.clone())).unwrap();
        s.write(COM1_BASE, IER, &[0x02]); // THR-empty interrupt on
        irq.read().unwrap(); // enabling THRE with an empty THR raises it at once
        let mut iir = [0u8];
        for &c in b"hi\n" {
            s.read(COM1_BASE, IIR, &mut iir); // the driver acknowledges, as its ISR does
            s.write(COM1_BASE, 0, &[c]);
            assert_eq!(irq.read().unwrap(), 1, "THR empty again after {c:#x}");
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_is_queued_and_flow_controlled() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(io::sink())).unwrap();
        s.write(COM1_BASE, IER, &[0x01]); // received-data interrupt on
        let big = [b'x'; 100];
        let n = s.enqueue_input(&big);
        assert!(
            n > 0 && n < big.len(),
            "the FIFO takes only what fits ({n})"
        );
        assert_eq!(s.enqueue_input(&big), 0, "full FIFO accepts nothing");
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        s.read(COM1_BASE, LSR, &mut b);
        assert_eq!(b[0] & 1, 1, "data ready");
        for _ in 0..n {
            s.read(COM1_BASE, 0, &mut b);
            assert_eq!(b[0], b'x');
        }
        s.read(COM1_BASE, LSR, &mut b);
        assert_eq!(b[0] & 1, 0, "drained");
        assert!(
            s.input_space_evt().read().unwrap() >= 1,
            "the VMM is told to feed more"
        );
    }
}
