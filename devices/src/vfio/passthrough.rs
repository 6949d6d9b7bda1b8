//! Passthrough for a whole VM: one KVM-VFIO device, one IOMMU space, guest RAM mapped
//! once after the first device, and a [`VfioPciDevice`] per `--device`.
//!
//! The VMM's glue, in order:
//! 1. [`Passthrough::new`] once the VM and its irqchip exist, with the backend the
//!    discovery step chose;
//! 2. per resolved device: [`Passthrough::add_device`] with a per-device [`VmOps`](super::vm::VmOps)
//!    (e.g. [`super::kvm_vm::KvmVmOps`]), the GSI router, the VM's BAR allocator and the
//!    INTx GSI of its slot; RAM is DMA-mapped right after the first one opens;
//! 3. wrap the device in `Arc<Mutex<..>>`, add it to the PCI root, register its
//!    [`VfioPciDevice::trapped_ranges`] on the buses, and poll
//!    [`VfioPciDevice::intx_eoi_fd`] if it returns one;
//! 4. on guest reboot call [`VfioPciDevice::reset`]; at exit drop the devices before this.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use vfio_ioctls::VfioDeviceFd;
use vm_memory::GuestMemoryBackend;

use super::device::{DeviceContext, DeviceError, VfioPciDevice};
use super::discovery::backend_choice::Backend;
use super::discovery::resolve::ResolvedDevice;
use super::dma::{DeviceSource, DmaError, DmaReport, IommuSpace};
use super::kvm_vfio::{create_kvm_vfio_device, KvmVfioError};

/// Setting up passthrough failed.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The KVM-VFIO device.
    #[error(transparent)]
    KvmVfio(#[from] KvmVfioError),
    /// Backend, device open or DMA mapping.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// The device model.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl From<&ResolvedDevice> for DeviceSource {
    fn from(d: &ResolvedDevice) -> Self {
        DeviceSource {
            sysfs: d.sysfs.clone(),
            cdev: d.cdev.as_ref().map(|c| c.node.clone()),
            cdev_fd: d.fd,
        }
    }
}

/// The VM-wide passthrough state.
pub struct Passthrough {
    space: IommuSpace,
    _kvm_vfio: Arc<VfioDeviceFd>,
    dma: Option<DmaReport>,
}

impl Passthrough {
    /// Creates the KVM-VFIO device and opens the backend's IOMMU space.
    pub fn new(
        vm: &VmFd,
        backend: Backend,
        iommufd_fd: Option<RawFd>,
    ) -> Result<Self, PassthroughError> {
        let kvm_vfio = create_kvm_vfio_device(vm)?;
        let space = match backend {
            Backend::Group => super::group::open_container(kvm_vfio.clone())?,
            Backend::Iommufd => super::iommufd::open_ioas(kvm_vfio.clone(), iommufd_fd)?,
        };
        log::info!("VFIO: using the {} backend", space.name());
        Ok(Self {
            space,
            _kvm_vfio: kvm_vfio,
            dma: None,
        })
    }

    /// The IOMMU space (for benchmarks and diagnostics).
    pub fn space(&self) -> &IommuSpace {
        &self.space
    }

    /// What the RAM mapping did, once it happened.
    pub fn dma_report(&self) -> Option<DmaReport> {
        self.dma
    }

    /// Opens `src`, maps guest RAM if it is the first device, and builds its model.
    pub fn add_device<M: GuestMemoryBackend>(
        &mut self,
        name: &str,
        src: &DeviceSource,
        mem: &M,
        ctx: DeviceContext<'_>,
    ) -> Result<VfioPciDevice, PassthroughError> {
        let dev = Arc::new(self.space.open_device(src)?);
        if self.dma.is_none() {
            self.dma = Some(self.space.map_guest_memory(mem)?);
        }
        Ok(VfioPciDevice::new(name, dev, ctx)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_on_a_host_without_vfio_fails_with_a_fix_for_each_backend() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        if !std::path::Path::new("/dev/vfio/vfio").exists() {
            let e = Passthrough::new(&vm, Backend::Group, None)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("load the vfio"), "{e}");
        }
        if !std::path::Path::new("/dev/iommu").exists() {
            let e = Passthrough::new(&vm, Backend::Iommufd, None)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("CONFIG_IOMMUFD"), "{e}");
        }
    }
}
