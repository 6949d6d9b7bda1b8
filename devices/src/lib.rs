//! Device models for passvm: the PIO/MMIO buses, legacy PC devices, the PCI bus and the
//! VFIO passthrough device.

#![deny(missing_docs)]

pub mod bus;
pub mod legacy;
pub mod log_limit;
pub mod option_list;
pub mod pci;
pub mod power;
pub mod size;
pub mod thread;
pub mod vfio;
