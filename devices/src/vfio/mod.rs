//! VFIO: from a `--device` string to a device the guest drives.
//!
//! `naming` and `discovery` resolve what the user typed. The rest is the passthrough
//! device model (docs/passthrough.md): [`passthrough`] is the VM-wide entry point,
//! [`device`] the guest's view of one function, [`backend`] the seam to the kernel's VFIO
//! device and [`vm`] the seam to the VMM.

pub mod backend;
pub mod bars;
pub mod device;
pub mod discovery;
pub mod dma;
pub mod group;
pub mod handle;
#[cfg(test)]
mod hw_probe;
pub mod intx;
pub mod iommufd;
pub mod iova;
mod irq;
pub mod kvm_vfio;
pub mod kvm_vm;
pub mod msi;
pub mod msix;
pub mod naming;
pub mod passthrough;
mod sys;
#[cfg(test)]
mod testing;
pub mod vm;
