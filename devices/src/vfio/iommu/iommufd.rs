//! The iommufd backend: one IOAS shared by every device cdev of the VM
//! (`/dev/iommu` + `/dev/vfio/devices/vfioN`).

use std::fs::File;
use std::os::unix::io::{FromRawFd, RawFd};
use std::sync::Arc;

use iommufd_ioctls::IommuFd;
use vfio_ioctls::{VfioDevice, VfioDeviceFd, VfioError, VfioIommufd};

use super::handle::{Opened, OwnedVfioDevice};
use super::{DeviceSource, IommuError, IommuSpace};

/// Opens the VM's iommufd (or adopts `iommufd_fd`, passed by a privileged launcher) and
/// allocates its IOAS; `kvm_vfio` registers each cdev with KVM before its bind.
pub fn open_ioas(
    kvm_vfio: Arc<VfioDeviceFd>,
    iommufd_fd: Option<RawFd>,
) -> Result<IommuSpace, IommuError> {
    let iommufd = match iommufd_fd {
        Some(fd) => {
            // SAFETY: `dup` makes a new descriptor we own; the caller keeps theirs.
            let dup = unsafe { libc::dup(fd) };
            if dup < 0 {
                return Err(IommuError::Open {
                    what: format!("using --iommufd-fd {fd}"),
                    source: VfioError::VfioDeviceDupFd,
                    hint: "; pass an open /dev/iommu descriptor",
                });
            }
            // SAFETY: `dup` is a fresh descriptor owned by nobody else.
            IommuFd::new_from_fd(unsafe { File::from_raw_fd(dup) })
        }
        None => IommuFd::new().map_err(|e| IommuError::Open {
            what: "opening /dev/iommu".into(),
            source: VfioError::NewVfioIommufd(e),
            hint: "; the host kernel needs CONFIG_IOMMUFD (or use --vfio-backend group)",
        })?,
    };
    let v = VfioIommufd::new(Arc::new(iommufd), None, Some(kvm_vfio)).map_err(|source| {
        IommuError::Open {
            what: "allocating an IOAS".into(),
            source,
            hint: "",
        }
    })?;
    Ok(IommuSpace::Iommufd(Arc::new(v)))
}

fn hint(e: &VfioError) -> &'static str {
    match e {
        VfioError::VfioDeviceBindIommufd(_) => {
            "; without interrupt remapping the host needs iommufd.allow_unsafe_interrupts=1"
        }
        VfioError::InvalidVfioDev | VfioError::OpenDeviceCdev(_) => {
            "; the device has no usable vfio-dev/vfioN cdev: is it bound to vfio-pci on a kernel \
             with CONFIG_VFIO_DEVICE_CDEV? (or use --vfio-backend group)"
        }
        _ => "",
    }
}

/// Opens a device from a launcher's cdev fd, its cdev path, or its sysfs path (in that
/// order of preference), binds it to the iommufd and attaches it to the IOAS.
pub(super) fn open_device(
    v: &Arc<VfioIommufd>,
    src: &DeviceSource,
) -> Result<OwnedVfioDevice, IommuError> {
    let shown = match (&src.cdev_fd, &src.cdev) {
        (Some(fd), _) => format!("cdev fd {fd}"),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => src.sysfs.display().to_string(),
    };
    let wrap = |source: VfioError| IommuError::Open {
        what: format!("opening {shown} through iommufd"),
        hint: hint(&source),
        source,
    };
    let dev = if let Some(fd) = src.cdev_fd {
        // SAFETY: `dup` makes a new descriptor we own; the launcher keeps its own.
        let dup = unsafe { libc::dup(fd) };
        if dup < 0 {
            return Err(wrap(VfioError::VfioDeviceDupFd));
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        let f = unsafe { File::from_raw_fd(dup) };
        VfioDevice::new_from_fd(f, v.clone(), true).map_err(wrap)?
    } else if let Some(path) = &src.cdev {
        let f = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| wrap(VfioError::OpenDeviceCdev(e)))?;
        VfioDevice::new_from_fd(f, v.clone(), true).map_err(wrap)?
    } else {
        VfioDevice::new(&src.sysfs, v.clone(), true).map_err(wrap)?
    };
    Ok(OwnedVfioDevice::new(dev, Opened::Cdev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn the_ioas_opens_or_says_how_to_get_iommufd() {
        let vm = crate::vfio::testing::kvm_vm();
        let kdev = crate::vfio::iommu::kvm_vfio::create_kvm_vfio_device(&vm).unwrap();
        match open_ioas(kdev.clone(), None) {
            // An iommufd host: the IOAS is allocated, and says which backend it is.
            Ok(space) => {
                assert!(std::path::Path::new("/dev/iommu").exists());
                assert_eq!(space.name(), "iommufd");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("/dev/iommu") && e.contains("CONFIG_IOMMUFD"),
                    "{e}"
                );
                assert!(e.contains("os error 2"), "the errno is kept: {e}");
            }
        }
        // A descriptor that is not open fails the same way on every host.
        let e = open_ioas(kdev, Some(-1)).err().unwrap().to_string();
        assert!(e.contains("--iommufd-fd -1"), "{e}");
    }
}
