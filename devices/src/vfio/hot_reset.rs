//! Bus and slot hot reset (`VFIO_DEVICE_PCI_HOT_RESET`) for functions without a reset
//! of their own.
//!
//! A function without FLR or a power-management reset that shares its bus or slot
//! (a GPU and its audio function, a multifunction NIC) has no `VFIO_DEVICE_RESET`:
//! the only reset is the secondary bus reset of the bridge above, which resets every
//! function below it. VFIO does it only when the caller proves it owns every affected
//! device: with the group backend by passing a file descriptor of each affected group,
//! with cdevs by having opened every affected device in the same iommufd (an empty fd
//! list). passvm asks the kernel which devices a reset would touch first and resets
//! only when every one of them is this VM's; otherwise it says which are not.
//!
//! vfio-ioctls has neither call and keeps the group fds private, so the ioctls are ours
//! and the group fds are found among the process's own descriptors (`/proc/self/fd`
//! links to `/dev/vfio/<group>`): the container opened them, nobody else can (a group
//! opens once).

use std::os::unix::io::RawFd;
use std::path::Path;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_HOT_RESET_FLAG_DEV_ID, VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED,
};

use super::sys::{VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_DEVICE_PCI_HOT_RESET};

/// One function a hot reset would reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dependent {
    /// Its IOMMU group (group backend) or iommufd device ID (cdev backend).
    pub id: u32,
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device and function (`dev << 3 | fn`).
    pub devfn: u8,
}

impl std::fmt::Display for Dependent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment,
            self.bus,
            self.devfn >> 3,
            self.devfn & 7
        )
    }
}

/// What `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` says about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotResetInfo {
    /// `VFIO_PCI_HOT_RESET_FLAG_*`.
    pub flags: u32,
    /// Every function the reset would touch, this one included.
    pub devices: Vec<Dependent>,
}

impl HotResetInfo {
    /// The IDs are iommufd device IDs (the device was opened through its cdev).
    pub fn by_dev_id(&self) -> bool {
        self.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0
    }

    /// cdev backend: the kernel says every affected device is opened in our iommufd.
    pub fn all_owned(&self) -> bool {
        self.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED != 0
    }

    /// The affected IOMMU groups (group backend), each once.
    pub fn groups(&self) -> Vec<u32> {
        let mut g: Vec<u32> = self.devices.iter().map(|d| d.id).collect();
        g.sort_unstable();
        g.dedup();
        g
    }

    /// The affected functions, for messages.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.devices.iter().map(ToString::to_string).collect();
        names.join(", ")
    }
}

/// Parses the kernel's reply: header (argsz, flags, count), then `count` entries of
/// two words (id; segment, bus, devfn).
fn parse_info(words: &[u32]) -> Option<HotResetInfo> {
    let (flags, count) = (*words.get(1)?, *words.get(2)? as usize);
    let devices = words
        .get(3..3 + 2 * count)?
        .chunks_exact(2)
        .map(|d| Dependent {
            id: d[0],
            segment: d[1] as u16,
            bus: (d[1] >> 16) as u8,
            devfn: (d[1] >> 24) as u8,
        })
        .collect();
    Some(HotResetInfo { flags, devices })
}

/// Asks the kernel which functions a hot reset of device `fd` would reset; `Ok(None)`
/// when the device cannot be hot reset at all (no bus or slot reset above it).
pub fn info(fd: RawFd) -> std::io::Result<Option<HotResetInfo>> {
    // First with room for no entry: the kernel answers ENOSPC with the count.
    let mut count = 0usize;
    for _ in 0..3 {
        let mut words = vec![0u32; 3 + 2 * count];
        words[0] = (words.len() * 4) as u32;
        // SAFETY: `words` is a vfio_pci_hot_reset_info of argsz bytes (header plus
        // `count` entries); the kernel writes at most argsz bytes into it.
        let ret = unsafe {
            libc::ioctl(
                fd,
                VFIO_DEVICE_GET_PCI_HOT_RESET_INFO() as _,
                words.as_mut_ptr(),
            )
        };
        if ret == 0 {
            return Ok(parse_info(&words));
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOSPC) => count = words[2] as usize,
            // No slot or bus reset above the device.
            Some(libc::ENODEV) | Some(libc::ENOTTY) | Some(libc::EINVAL) => return Ok(None),
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Err(std::io::Error::other(
        "the affected device list kept growing",
    ))
}

/// Our open descriptors of `/dev/vfio/<group>` for each of `groups`, or the first group
/// we hold none for.
pub fn own_group_fds(proc_fd: &Path, groups: &[u32]) -> Result<Vec<RawFd>, u32> {
    let mut held: Vec<(u32, RawFd)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(proc_fd) {
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
                continue;
            };
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            let group = target
                .strip_prefix("/dev/vfio")
                .ok()
                .and_then(|g| g.to_str())
                .and_then(|g| g.parse::<u32>().ok());
            if let Some(g) = group {
                held.push((g, fd));
            }
        }
    }
    groups
        .iter()
        .map(|g| {
            held.iter()
                .find(|(h, _)| h == g)
                .map(|(_, fd)| *fd)
                .ok_or(*g)
        })
        .collect()
}

/// Issues the hot reset with `group_fds` (empty for the cdev backend).
pub fn reset(fd: RawFd, group_fds: &[RawFd]) -> std::io::Result<()> {
    let mut words: Vec<u32> = vec![0, 0, group_fds.len() as u32];
    words.extend(group_fds.iter().map(|f| *f as u32));
    words[0] = (words.len() * 4) as u32;
    // SAFETY: `words` is a complete vfio_pci_hot_reset (argsz, flags, count, then the
    // s32 group fds); the kernel only reads it, within argsz.
    let ret = unsafe { libc::ioctl(fd, VFIO_DEVICE_PCI_HOT_RESET() as _, words.as_ptr()) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_affected_functions() {
        // Two functions of slot 0 on bus 2, both in group 7: segment 0 in the low
        // half of the second word, then bus, then devfn.
        let w = [28, 0, 2, 7, 2 << 16, 7, 2 << 16 | 1 << 24];
        let info = parse_info(&w).unwrap();
        assert_eq!(info.describe(), "0000:02:00.0, 0000:02:00.1");
        assert_eq!(info.groups(), vec![7]);
        assert!(!info.by_dev_id() && !info.all_owned());
        assert!(parse_info(&w[..5]).is_none(), "short reply");
        let owned = parse_info(&[12, 3, 0]).unwrap();
        assert!(owned.by_dev_id() && owned.all_owned() && owned.devices.is_empty());
    }

    #[test]
    fn finds_only_the_groups_this_process_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/dev/vfio/12", dir.path().join("9")).unwrap();
        std::os::unix::fs::symlink("/dev/vfio/vfio", dir.path().join("10")).unwrap();
        std::os::unix::fs::symlink("/dev/vfio/devices/vfio3", dir.path().join("11")).unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("12")).unwrap();
        assert_eq!(own_group_fds(dir.path(), &[12]), Ok(vec![9]));
        assert_eq!(
            own_group_fds(dir.path(), &[12, 13]),
            Err(13),
            "group 13 is not ours"
        );
        assert_eq!(own_group_fds(dir.path(), &[]), Ok(vec![]));
    }
}
