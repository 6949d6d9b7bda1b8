//! Which VFIO device types passvm assigns, decided from `VFIO_DEVICE_GET_INFO` flags
//! after the device is opened (the uAPI's way to learn the type).

use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_AMBA, VFIO_DEVICE_FLAGS_AP, VFIO_DEVICE_FLAGS_CCW, VFIO_DEVICE_FLAGS_CDX,
    VFIO_DEVICE_FLAGS_FSL_MC, VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_PLATFORM,
};

/// A device type passvm refuses.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{device} is a {kind} VFIO device (VFIO_DEVICE_GET_INFO flags {flags:#x}); passvm assigns PCI devices (including PCI mdevs) only")]
pub struct UnsupportedDeviceType {
    /// The device (BDF or UUID).
    pub device: String,
    /// The type the flags name.
    pub kind: &'static str,
    /// The raw flags.
    pub flags: u32,
}

/// Accepts a device whose `vfio_device_info.flags` say PCI; refuses platform, AMBA,
/// ccw, AP, fsl-mc, CDX and unknown types with a message naming the type.
pub fn check_device_flags(device: &str, flags: u32) -> Result<(), UnsupportedDeviceType> {
    if flags & VFIO_DEVICE_FLAGS_PCI != 0 {
        return Ok(());
    }
    let kind = [
        (VFIO_DEVICE_FLAGS_PLATFORM, "platform"),
        (VFIO_DEVICE_FLAGS_AMBA, "AMBA"),
        (VFIO_DEVICE_FLAGS_CCW, "ccw (s390 channel I/O)"),
        (VFIO_DEVICE_FLAGS_AP, "AP (s390 crypto)"),
        (VFIO_DEVICE_FLAGS_FSL_MC, "fsl-mc"),
        (VFIO_DEVICE_FLAGS_CDX, "CDX"),
    ]
    .iter()
    .find(|(bit, _)| flags & bit != 0)
    .map(|(_, k)| *k)
    .unwrap_or("non-PCI (unknown type)");
    Err(UnsupportedDeviceType {
        device: device.to_string(),
        kind,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_bindings::bindings::vfio::{VFIO_DEVICE_FLAGS_CAPS, VFIO_DEVICE_FLAGS_RESET};

    #[test]
    fn pci_is_accepted_with_any_extra_flags() {
        assert!(check_device_flags("0000:00:03.0", VFIO_DEVICE_FLAGS_PCI).is_ok());
        assert!(check_device_flags(
            "x",
            VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_CAPS
        )
        .is_ok());
    }

    #[test]
    fn platform_ccw_and_unknown_are_refused_by_name() {
        let e = check_device_flags("fe200000.dma", VFIO_DEVICE_FLAGS_PLATFORM).unwrap_err();
        assert!(e.to_string().contains("platform VFIO device"), "{e}");
        let e = check_device_flags("0.0.1234", VFIO_DEVICE_FLAGS_CCW | VFIO_DEVICE_FLAGS_RESET)
            .unwrap_err();
        assert_eq!(e.kind, "ccw (s390 channel I/O)");
        let e = check_device_flags("x", VFIO_DEVICE_FLAGS_RESET).unwrap_err();
        assert_eq!(e.kind, "non-PCI (unknown type)");
        assert!(e.to_string().contains("0x1"));
    }
}
