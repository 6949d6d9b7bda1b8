//! VFIO: from a `--device` string to a device the guest drives, one folder per stage.
//!
//! 1. [`naming`] and [`discovery`]: what the user typed, resolved to checked host devices
//!    and a backend choice.
//! 2. [`iommu`]: the VM's one IOMMU space (type1 container or iommufd IOAS), the devices
//!    opened in it and guest RAM mapped into it.
//! 3. [`device`]: the guest's view of one PCI function (config space, BARs, MSI, MSI-X,
//!    INTx, reset), over the [`device_fd`] seam to the kernel's VFIO device.
//! 4. [`vm`]: the seam to the VMM (memslots, MMIO/PIO traps) and its KVM implementation.
//!
//! [`assignment`] runs the stages for every `--device` of a VM (docs/passthrough.md);
//! [`unplug`] takes one out of a running VM in the order that keeps it unreachable.
//! [`device_fd`], [`memlock`] and `sys` are shared by several stages and import none.

pub mod assignment;
pub mod device;
pub(crate) mod device_fd;
pub mod discovery;
pub mod hot_reset;
#[cfg(test)]
mod hw_probe;
pub mod iommu;
pub mod memlock;
pub mod naming;
mod sys;
/// Fakes of the kernel's VFIO device and of the VM, public for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub mod testing;
#[cfg(all(test, not(feature = "fuzzing")))]
pub(crate) mod testing;
pub mod unplug;
pub mod vm;
