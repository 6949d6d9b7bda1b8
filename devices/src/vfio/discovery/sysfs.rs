//! Reading sysfs and `/dev` below roots given as parameters, so tests run on a fake tree.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the host's sysfs, `/dev` and passvm's state directory are.
///
/// Production uses [`Roots::host`]; tests point these at a temporary tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The sysfs mount (`/sys`).
    pub sys: PathBuf,
    /// The device node directory (`/dev`).
    pub dev: PathBuf,
    /// Where `passvm bind` remembers original drivers (`/run/passvm`).
    pub state: PathBuf,
    /// The procfs mount (`/proc`): mounts, swaps, routes and consoles.
    pub proc: PathBuf,
}

impl Roots {
    /// The real host: `/sys`, `/dev`, `/run/passvm`.
    pub fn host() -> Self {
        Roots {
            sys: "/sys".into(),
            dev: "/dev".into(),
            state: "/run/passvm".into(),
            proc: "/proc".into(),
        }
    }

    /// A path under the sysfs root; `rel` is relative to `/sys`.
    pub fn sys_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.sys.join(rel)
    }

    /// A path under the `/dev` root; `rel` is relative to `/dev`.
    pub fn dev_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dev.join(rel)
    }

    /// Maps a host-view path (`/sys/...`, `/dev/...`) onto these roots.
    pub fn rebase(&self, host_path: &Path) -> Option<PathBuf> {
        if let Ok(rest) = host_path.strip_prefix("/sys") {
            return Some(self.sys.join(rest));
        }
        if let Ok(rest) = host_path.strip_prefix("/dev") {
            return Some(self.dev.join(rest));
        }
        None
    }

    /// Maps a real path back to the host view (`/sys/...` or `/dev/...`) when it lies
    /// under one of the roots; used after canonicalising a path the user gave.
    pub fn host_view(&self, real: &Path) -> Option<PathBuf> {
        for (root, name) in [(&self.sys, "/sys"), (&self.dev, "/dev")] {
            let root = fs::canonicalize(root).unwrap_or_else(|_| root.clone());
            if let Ok(rest) = real.strip_prefix(&root) {
                return Some(Path::new(name).join(rest));
            }
        }
        None
    }

    /// A path relative to the sysfs root, for messages (`/sys/...` in the host view).
    pub fn show_sys(&self, real: &Path) -> String {
        self.host_view(real)
            .unwrap_or_else(|| real.to_path_buf())
            .display()
            .to_string()
    }
}

/// Reads a sysfs attribute, trimmed; `None` when it does not exist or cannot be read.
pub fn attr(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Parses `0x1af4`-style hex attributes.
pub fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The last component of a symlink's target (`driver` → `vfio-pci`).
pub fn link_name(link: &Path) -> Option<String> {
    fs::read_link(link)
        .ok()?
        .file_name()?
        .to_str()
        .map(str::to_string)
}

/// The directory name of a path as a `String`.
pub fn file_name(p: &Path) -> Option<String> {
    p.file_name()?.to_str().map(str::to_string)
}

/// Parses a sysfs `dev` attribute (`MAJ:MIN`).
pub fn parse_devnum(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// The major:minor of a character device node, or why it is not one.
pub fn char_devnum(node: &Path) -> io::Result<(u32, u32)> {
    let md = fs::metadata(node)?;
    if !md.file_type().is_char_device() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a character device",
        ));
    }
    Ok(split_rdev(md.rdev()))
}

/// Splits a `dev_t` into major and minor.
pub fn split_rdev(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// Sorted names of the entries of a directory; empty when it does not exist.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_and_back() {
        let t = tempfile::tempdir().unwrap();
        let roots = Roots {
            sys: t.path().join("sys"),
            dev: t.path().join("dev"),
            state: t.path().join("run"),
            proc: t.path().join("proc"),
        };
        fs::create_dir_all(&roots.sys).unwrap();
        fs::create_dir_all(&roots.dev).unwrap();
        let real = roots.rebase(Path::new("/sys/bus/pci")).unwrap();
        assert_eq!(real, roots.sys.join("bus/pci"));
        let canon_sys = fs::canonicalize(&roots.sys).unwrap();
        assert_eq!(
            roots.host_view(&canon_sys.join("devices/x")).unwrap(),
            Path::new("/sys/devices/x")
        );
        assert!(roots.rebase(Path::new("/etc/passwd")).is_none());
        assert!(roots.host_view(Path::new("/etc")).is_none());
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_hex("0x1af4\n"), Some(0x1af4));
        assert_eq!(parse_hex("0x010000"), Some(0x010000));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_devnum("237:0\n"), Some((237, 0)));
        assert_eq!(parse_devnum("237"), None);
        assert_eq!(parse_devnum("a:b"), None);
    }

    #[test]
    fn char_devnum_of_dev_null() {
        assert_eq!(char_devnum(Path::new("/dev/null")).unwrap(), (1, 3));
        assert!(char_devnum(Path::new("/")).is_err());
    }
}
