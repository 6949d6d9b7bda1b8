//! `/dev/vfio/<bus>/<name>` links: what passvm's udev rule (`resources/udev/`) makes for
//! every VFIO device cdev, and the check passvm runs before it trusts one.
//!
//! The rule links `/dev/vfio/<bus>/<name>` to `../devices/vfioN`, where `<bus>` is the
//! device's subsystem and `<name>` its sysfs directory name. A link is only a hint:
//! anybody who can write to `/dev` could have planted it, and it goes stale when udev
//! misses an event (udevd stopped, the rule removed while devices were bound). So
//! passvm follows it only after checking that it ends at a real VFIO cdev node and that
//! sysfs says that cdev belongs to the very device the bus and name designate.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::sysfs::{attr, char_devnum, file_name, link_name, parse_devnum, Roots};

/// Characters besides ASCII letters and digits a name may have and still get a link.
///
/// udev splits `SYMLINK` on whitespace and replaces characters outside its own safe
/// set with `_`, so a name with any other character would become several links, or
/// the link of some other device's name. The rule refuses those names with the same
/// set (a unit test checks that the rule text and this constant agree).
pub const LINK_NAME_EXTRA_CHARS: &str = "#+.:=@_-";

/// Why the rule makes no link for a device with this bus and name, if it makes none.
pub fn unlinkable(bus: &str, name: &str) -> Option<String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || LINK_NAME_EXTRA_CHARS.contains(c))
    };
    if ok(bus) && ok(name) {
        return None;
    }
    Some(format!(
        "{name:?} on bus {bus:?} gets no /dev/vfio link: udev would split or rewrite a name \
         with characters outside A-Z a-z 0-9 {LINK_NAME_EXTRA_CHARS}; name it by its sysfs path"
    ))
}

/// Where the rule puts the link of a device (host view), or why it puts none.
pub fn link_path(bus: &str, name: &str) -> Result<PathBuf, String> {
    match unlinkable(bus, name) {
        Some(why) => Err(why),
        None => Ok(Path::new("/dev/vfio").join(bus).join(name)),
    }
}

/// The bus and name of the device at a canonical sysfs directory, as the rule reads
/// them (its `subsystem` link, its directory name).
pub fn bus_and_name(sysfs: &Path) -> Option<(String, String)> {
    Some((link_name(&sysfs.join("subsystem"))?, file_name(sysfs)?))
}

/// What is at `/dev/vfio/<bus>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Nothing: udev (or the rule) is not there, or the device has no cdev.
    Absent,
    /// A link to the device's own verified cdev.
    Valid {
        /// The link (host view).
        path: PathBuf,
        /// The cdev it ends at (`vfioN`).
        cdev: String,
    },
    /// Something passvm refuses to follow.
    Bad {
        /// The link (host view).
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

impl LinkState {
    /// The fix printed with a [`LinkState::Bad`] link.
    pub fn fix(path: &Path) -> String {
        format!(
            "refresh the links with `sudo passvm udev install` (it reloads the rule and replays \
             the cdevs' events), or remove it (`sudo rm {}`); the device can always be named by \
             its sysfs path (or a PCI device by its address)",
            path.display()
        )
    }
}

/// Checks the link for (`bus`, `name`): `device` is that device's canonical sysfs
/// directory, `None` when sysfs has no such device.
pub fn check(roots: &Roots, bus: &str, name: &str, device: Option<&Path>) -> LinkState {
    let shown = Path::new("/dev/vfio").join(bus).join(name);
    let at = roots.dev_path(Path::new("vfio").join(bus).join(name));
    let bad = |why: String| LinkState::Bad {
        path: shown.clone(),
        why,
    };
    let md = match fs::symlink_metadata(&at) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return LinkState::Absent,
        Err(e) => return bad(format!("cannot be read: {e}")),
    };
    if !md.file_type().is_symlink() {
        let what = if md.is_dir() {
            "a directory"
        } else {
            "not a symlink"
        };
        return bad(format!(
            "is {what}, where passvm's udev rule puts a symlink to /dev/vfio/devices/vfioN"
        ));
    }
    let target = fs::read_link(&at)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let Ok(real) = fs::canonicalize(&at) else {
        return bad(format!(
            "points to {target}, which does not exist (a dangling link): the cdev it was made \
             for is gone"
        ));
    };
    let devices_dir = roots.dev_path("vfio/devices");
    let devices_dir = fs::canonicalize(&devices_dir).unwrap_or(devices_dir);
    let cdev = match (real.parent(), file_name(&real)) {
        (Some(dir), Some(n)) if dir == devices_dir && is_cdev_name(&n) => n,
        _ => {
            let shown_real = roots
                .host_view(&real)
                .unwrap_or_else(|| real.clone())
                .display()
                .to_string();
            return bad(format!(
                "points to {shown_real}, which is not a VFIO device cdev \
                 (/dev/vfio/devices/vfioN)"
            ));
        }
    };
    let owner = match cdev_owner(roots, &cdev, &real) {
        Ok(dir) => dir,
        Err(why) => return bad(format!("points to /dev/vfio/devices/{cdev}, but {why}")),
    };
    let describe_owner = || match bus_and_name(&owner) {
        Some((b, n)) => format!("{b} device {n}"),
        None => roots.show_sys(&owner),
    };
    match device {
        None => bad(format!(
            "points to /dev/vfio/devices/{cdev}, the cdev of {}, but there is no \
             /sys/bus/{bus}/devices/{name}: the link is stale",
            describe_owner()
        )),
        Some(dev) if dev != owner => bad(format!(
            "points to /dev/vfio/devices/{cdev}, which is the cdev of {}, not of {bus} device {name}",
            describe_owner()
        )),
        Some(_) => LinkState::Valid { path: shown, cdev },
    }
}

fn is_cdev_name(n: &str) -> bool {
    n.strip_prefix("vfio")
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The canonical sysfs directory of the device that owns cdev `name`, after checking
/// that the node at `node` carries the major:minor sysfs registers for `name`.
fn cdev_owner(roots: &Roots, name: &str, node: &Path) -> Result<PathBuf, String> {
    let node_dev = char_devnum(node).map_err(|e| format!("that is {e}"))?;
    let class_dir = roots.sys_path(Path::new("class/vfio-dev").join(name));
    let Some(sysfs_dev) = attr(&class_dir, "dev").and_then(|s| parse_devnum(&s)) else {
        return Err(format!(
            "sysfs registers no {name} (no /sys/class/vfio-dev/{name}/dev)"
        ));
    };
    if sysfs_dev != node_dev {
        return Err(format!(
            "the node is {}:{} and sysfs registers {name} as {}:{} (a stale node)",
            node_dev.0, node_dev.1, sysfs_dev.0, sysfs_dev.1
        ));
    }
    fs::canonicalize(class_dir.join("device"))
        .map_err(|_| format!("/sys/class/vfio-dev/{name}/device is missing"))
}
