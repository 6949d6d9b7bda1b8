//! Legacy PC devices: the 8250 serial port, enough of the i8042 for guest reboot, a minimal
//! CMOS/RTC, and a quiet sink for ports a PC guest pokes at without needing an answer.
//!
//! The PIC, PIT and IOAPIC are not here: they live in KVM (`KVM_CREATE_IRQCHIP`,
//! `KVM_CREATE_PIT2`), so their ports never reach userspace.

pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod sink;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::Serial;
pub use sink::Sink;
