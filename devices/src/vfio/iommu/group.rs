//! The legacy backend: a type1v2 container shared by every group of the VM
//! (`/dev/vfio/vfio` + `/dev/vfio/<group>`).

use std::path::Path;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError};

use super::handle::{Opened, OwnedVfioDevice};
use super::{IommuError, IommuSpace};

/// Opens the VM's container; `kvm_vfio` registers each group with KVM as it joins.
pub fn open_container(kvm_vfio: Arc<VfioDeviceFd>) -> Result<IommuSpace, IommuError> {
    let c = VfioContainer::new(Some(kvm_vfio)).map_err(|source| IommuError::Open {
        what: "opening /dev/vfio/vfio".into(),
        hint: "; load the vfio and vfio_iommu_type1 modules (or use the iommufd backend)",
        source,
    })?;
    Ok(IommuSpace::Group(Arc::new(c)))
}

fn hint(e: &VfioError) -> &'static str {
    match e {
        VfioError::GroupViable => {
            "; every device in the IOMMU group must be bound to vfio-pci (or no driver): \
             see `passvm devices` for the group's members"
        }
        VfioError::ContainerSetIOMMU(_) | VfioError::GroupSetContainer => {
            "; without interrupt remapping the host needs \
             vfio_iommu_type1.allow_unsafe_interrupts=1"
        }
        VfioError::OpenGroup(..) => {
            "; is the device bound to vfio-pci, and may this user open /dev/vfio/<group>?"
        }
        VfioError::InvalidPath => "; the sysfs path has no iommu_group link: is the IOMMU enabled?",
        _ => "",
    }
}

/// Opens the device at `sysfs` through its group (joining the container if needed).
pub(super) fn open_device(
    c: &Arc<VfioContainer>,
    sysfs: &Path,
) -> Result<OwnedVfioDevice, IommuError> {
    let dev = VfioDevice::new(sysfs, c.clone(), false).map_err(|source| IommuError::Open {
        what: format!("opening {} through its VFIO group", sysfs.display()),
        hint: hint(&source),
        source,
    })?;
    Ok(OwnedVfioDevice::new(
        dev,
        Opened::Group {
            sysfs: sysfs.to_path_buf(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn the_container_opens_or_says_how_to_get_vfio() {
        let vm = crate::vfio::testing::kvm_vm();
        let kdev = crate::vfio::iommu::kvm_vfio::create_kvm_vfio_device(&vm).unwrap();
        match open_container(kdev) {
            // A VFIO host: the container opens, and says which backend it is.
            Ok(space) => {
                assert!(Path::new("/dev/vfio/vfio").exists());
                assert_eq!(space.name(), "group");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("/dev/vfio/vfio") && e.contains("load the vfio"),
                    "{e}"
                );
            }
        }
    }
}
