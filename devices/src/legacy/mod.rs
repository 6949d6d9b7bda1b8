//! Legacy PC devices: the 8250 serial port and enough of the i8042 for guest reboot.
//!
//! OWNER: VMM-core helper.
