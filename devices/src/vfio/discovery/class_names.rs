//! Human names for PCI class codes (PCI Code and ID Assignment Specification),
//! built in so `passvm devices` needs no `pci.ids` file.

/// The name of a 24-bit PCI class code (`class << 16 | subclass << 8 | prog-if`):
/// the subclass name when known, else the base class name.
pub fn class_name(code: u32) -> &'static str {
    let base = (code >> 16) as u8;
    let sub = (code >> 8) as u8;
    match (base, sub) {
        (0x00, 0x01) => "VGA-compatible (pre-2.0)",
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x01) => "IDE interface",
        (0x01, 0x04) => "RAID bus controller",
        (0x01, 0x05) => "ATA controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x07) => "Serial Attached SCSI controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, _) => "Mass storage controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x02, 0x07) => "InfiniBand controller",
        (0x02, _) => "Network controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x03, 0x02) => "3D controller",
        (0x03, _) => "Display controller",
        (0x04, 0x01) => "Multimedia audio controller",
        (0x04, 0x03) => "Audio device",
        (0x04, _) => "Multimedia controller",
        (0x05, _) => "Memory controller",
        (0x06, 0x00) => "Host bridge",
        (0x06, 0x01) => "ISA bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x06, 0x09) => "Semi-transparent PCI bridge",
        (0x06, _) => "Bridge",
        (0x07, 0x00) => "Serial controller",
        (0x07, _) => "Communication controller",
        (0x08, 0x06) => "IOMMU",
        (0x08, _) => "System peripheral",
        (0x09, _) => "Input device controller",
        (0x0b, _) => "Processor",
        (0x0c, 0x03) => "USB controller",
        (0x0c, 0x05) => "SMBus",
        (0x0c, _) => "Serial bus controller",
        (0x0d, _) => "Wireless controller",
        (0x10, _) => "Encryption controller",
        (0x11, _) => "Signal processing controller",
        (0x12, _) => "Processing accelerator",
        (0xff, _) => "Unassigned class",
        _ => "Unknown class",
    }
}

/// Whether a class code is a bridge that stays with the host: a host bridge, a PCI(-to-PCI)
/// bridge or a semi-transparent bridge. Listings hide them unless `--all`, and a group named
/// as a whole does not try to assign them.
pub fn is_host_side_bridge(code: u32) -> bool {
    let base = (code >> 16) as u8;
    let sub = (code >> 8) as u8;
    base == 0x06 && matches!(sub, 0x00 | 0x04 | 0x09)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(class_name(0x010000), "SCSI storage controller");
        assert_eq!(class_name(0x020000), "Ethernet controller");
        assert_eq!(class_name(0x060400), "PCI bridge");
        assert_eq!(class_name(0x078000), "Communication controller");
        assert_eq!(class_name(0xee0000), "Unknown class");
    }

    #[test]
    fn bridges() {
        assert!(is_host_side_bridge(0x060000));
        assert!(is_host_side_bridge(0x060400));
        assert!(!is_host_side_bridge(0x060100));
        assert!(!is_host_side_bridge(0x010000));
    }
}
