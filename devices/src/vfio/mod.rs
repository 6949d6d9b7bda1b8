//! VFIO: from a `--device` string to a device the guest drives.
//!
//! `naming` and `discovery` resolve what the user typed; the rest is the passthrough
//! device model: [`backend`] is the seam to the kernel's VFIO device, [`vm`] the seam to
//! the VMM, and `device` ties config space, BARs and interrupts together.

pub mod backend;
pub mod bars;
pub mod device;
pub mod discovery;
pub mod dma;
pub mod group;
pub mod handle;
pub mod iommufd;
pub mod intx;
pub mod iova;
pub mod kvm_vfio;
pub mod kvm_vm;
mod irq;
pub mod msi;
pub mod msix;
pub mod naming;
pub mod passthrough;
mod sys;
#[cfg(test)]
mod testing;
pub mod vm;
