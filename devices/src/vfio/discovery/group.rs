//! IOMMU groups: their members and whether the kernel will let userspace own them.
//!
//! Since Linux 5.19 a group is usable by VFIO ("viable") when the kernel can hand its
//! DMA ownership to userspace: every member must be unbound, bound to a VFIO driver,
//! or bound to a driver that declares `driver_managed_dma` and so never does DMA on the
//! kernel's behalf. In mainline those are `pci-stub` and `pcieport` (the port service
//! driver of PCIe root and switch ports). Any other bound driver blocks the whole group,
//! because the devices of a group cannot be isolated from each other.

use std::fs;
use std::path::PathBuf;

use super::class_names::is_host_side_bridge;
use super::sysfs::{attr, dir_names, file_name, link_name, parse_hex, Roots};

/// Drivers that mark `driver_managed_dma`: the kernel lets their device sit in a group
/// that userspace owns.
pub const DMA_SAFE_DRIVERS: [&str; 2] = ["pci-stub", "pcieport"];

/// One device of an IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Its sysfs name (BDF or mdev UUID).
    pub name: String,
    /// Its canonical sysfs directory.
    pub sysfs: PathBuf,
    /// The bus it sits on (`pci`, `mdev`, ...).
    pub bus: Option<String>,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// The PCI class code, if it has one.
    pub class: Option<u32>,
    /// Whether it is bound to a VFIO driver (by name, or because it has a `vfio-dev` entry).
    pub vfio_bound: bool,
}

impl GroupMember {
    /// Whether this is a bridge that stays with the host.
    pub fn is_bridge(&self) -> bool {
        self.class.is_some_and(is_host_side_bridge)
    }

    /// Whether this member keeps the group viable as it is now.
    pub fn allows_viability(&self) -> bool {
        match &self.driver {
            None => true,
            Some(d) => self.vfio_bound || DMA_SAFE_DRIVERS.contains(&d.as_str()),
        }
    }
}

/// Whether a driver name is a VFIO driver: `vfio-pci`, a `vfio-*` driver, or a
/// vendor variant driver (`mlx5_vfio_pci`, `virtio_vfio_pci`, ...).
pub fn is_vfio_driver_name(name: &str) -> bool {
    name.starts_with("vfio") || name.ends_with("_vfio_pci") || name.ends_with("-vfio-pci")
}

/// Reads the member of a group (or any device) at a canonical sysfs directory.
pub fn member_at(sysfs: PathBuf) -> GroupMember {
    let bus = link_name(&sysfs.join("subsystem"));
    let driver = link_name(&sysfs.join("driver"));
    let has_vfio_dev = !dir_names(&sysfs.join("vfio-dev")).is_empty();
    let vfio_bound = match (&driver, bus.as_deref()) {
        // Every driver on the mdev bus is a VFIO mdev driver.
        (Some(_), Some("mdev")) => true,
        (Some(d), _) => is_vfio_driver_name(d) || has_vfio_dev,
        (None, _) => false,
    };
    GroupMember {
        name: file_name(&sysfs).unwrap_or_default(),
        class: attr(&sysfs, "class").as_deref().and_then(parse_hex),
        bus,
        driver,
        vfio_bound,
        sysfs,
    }
}

/// The members of IOMMU group `id`, sorted by name; `None` when the group does not exist.
pub fn members(roots: &Roots, id: u32) -> Option<Vec<GroupMember>> {
    let dir = roots.sys_path(format!("kernel/iommu_groups/{id}/devices"));
    if !dir.is_dir() {
        return None;
    }
    let members = dir_names(&dir)
        .into_iter()
        .filter_map(|n| fs::canonicalize(dir.join(n)).ok())
        .map(member_at)
        .collect();
    Some(members)
}

/// The members that make the group non-viable, given that the devices named in
/// `becoming_vfio` will be bound to vfio-pci before the group is opened.
pub fn blockers<'a>(members: &'a [GroupMember], becoming_vfio: &[String]) -> Vec<&'a GroupMember> {
    members
        .iter()
        .filter(|m| !m.allows_viability() && !becoming_vfio.contains(&m.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, driver: Option<&str>, vfio_bound: bool) -> GroupMember {
        GroupMember {
            name: name.into(),
            sysfs: PathBuf::new(),
            bus: Some("pci".into()),
            driver: driver.map(str::to_string),
            class: Some(0x010000),
            vfio_bound,
        }
    }

    #[test]
    fn vfio_driver_names() {
        assert!(is_vfio_driver_name("vfio-pci"));
        assert!(is_vfio_driver_name("mlx5_vfio_pci"));
        assert!(!is_vfio_driver_name("virtio-pci"));
        assert!(!is_vfio_driver_name("pci-stub"));
    }

    #[test]
    fn viability_follows_the_kernel_rules() {
        let group = [
            m("0000:00:04.0", Some("vfio-pci"), true),
            m("0000:00:04.1", None, false),
            m("0000:00:04.2", Some("pci-stub"), false),
            m("0000:00:04.3", Some("pcieport"), false),
            m("0000:00:04.4", Some("virtio-pci"), false),
        ];
        let b = blockers(&group, &[]);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].name, "0000:00:04.4");
        assert!(blockers(&group, &["0000:00:04.4".into()]).is_empty());
    }
}
