//! The KVM-VFIO pseudo device: tells KVM which VFIO groups or cdevs belong to the VM, so
//! it can keep DMA coherent and connect VFIO interrupts to posted interrupts.
//!
//! vfio-ioctls registers each group (legacy) or device cdev (iommufd, before the bind that
//! needs it) with this device when it is handed to the backend constructors. Create it
//! once per VM.

use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::VfioDeviceFd;

/// The KVM-VFIO device could not be created.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot create the KVM-VFIO device ({0}); the host kernel needs CONFIG_KVM_VFIO \
     (on by default with VFIO and KVM)"
)]
pub struct KvmVfioError(#[source] pub vmm_sys_util::errno::Error);

/// Creates the VM's KVM-VFIO device, to pass to the backend constructors.
pub fn create_kvm_vfio_device(vm: &VmFd) -> Result<Arc<VfioDeviceFd>, KvmVfioError> {
    let mut cd = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let fd = vm.create_device(&mut cd).map_err(KvmVfioError)?;
    Ok(Arc::new(VfioDeviceFd::new_from_kvm(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn creates_the_device_on_a_real_vm() {
        let vm = crate::vfio::testing::kvm_vm();
        let dev = create_kvm_vfio_device(&vm).unwrap();
        assert!(dev.try_clone().is_ok());
    }
}
