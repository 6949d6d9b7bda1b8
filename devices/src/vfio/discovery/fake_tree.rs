//! A fake sysfs + /dev tree in a temporary directory, shaped like the kernel's, for tests.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::sysfs::Roots;

pub struct FakeHost {
    _tmp: tempfile::TempDir,
    pub roots: Roots,
}

pub fn mknod_char(path: &Path, major: u32, minor: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path; mknod only reads it.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn link(target: &Path, at: &Path) {
    fs::create_dir_all(at.parent().unwrap()).unwrap();
    let _ = fs::remove_file(at);
    symlink(target, at).unwrap();
}

impl FakeHost {
    /// An empty host with the vfio-pci, virtio-pci, pcieport and mtty drivers and both
    /// backends' shared nodes.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Roots {
            sys: tmp.path().join("sys"),
            dev: tmp.path().join("dev"),
            state: tmp.path().join("run"),
            proc: tmp.path().join("proc"),
        };
        for d in [
            "devices/pci0000:00",
            "devices/virtual/misc/iommu",
            "bus/pci/devices",
            "bus/mdev/devices",
            "bus/platform/devices",
            "kernel/iommu_groups",
            "class/vfio-dev",
            "class/iommu/virtio0",
            "dev/char",
        ] {
            fs::create_dir_all(roots.sys.join(d)).unwrap();
        }
        for drv in ["vfio-pci", "virtio-pci", "pcieport", "e1000e"] {
            fs::create_dir_all(roots.sys.join("bus/pci/drivers").join(drv)).unwrap();
        }
        fs::create_dir_all(roots.sys.join("bus/mdev/drivers/mtty")).unwrap();
        fs::write(roots.sys.join("bus/pci/drivers_probe"), "").unwrap();
        fs::create_dir_all(roots.dev.join("vfio")).unwrap();
        fs::write(roots.dev.join("vfio/vfio"), "").unwrap();
        fs::write(roots.dev.join("iommu"), "").unwrap();
        FakeHost { _tmp: tmp, roots }
    }

    pub fn sys(&self, rel: &str) -> PathBuf {
        self.roots.sys.join(rel)
    }

    /// Removes `/dev/iommu`, as on a kernel without CONFIG_IOMMUFD.
    pub fn without_iommufd(&self) {
        fs::remove_file(self.roots.dev.join("iommu")).unwrap();
    }

    /// A PCI device on the root bus.
    pub fn pci(&self, bdf: &str, class: u32, driver: Option<&str>, group: Option<u32>) -> PathBuf {
        let dir = self.sys("devices/pci0000:00").join(bdf);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vendor"), "0x1af4\n").unwrap();
        fs::write(dir.join("device"), "0x1042\n").unwrap();
        fs::write(dir.join("class"), format!("0x{class:06x}\n")).unwrap();
        fs::write(dir.join("driver_override"), "(null)\n").unwrap();
        link(&self.sys("bus/pci"), &dir.join("subsystem"));
        link(&dir, &self.sys("bus/pci/devices").join(bdf));
        if let Some(d) = driver {
            self.set_driver(&dir, Some(d));
        }
        if let Some(g) = group {
            self.join_group(&dir, g);
        }
        dir
    }

    pub fn set_driver(&self, dir: &Path, driver: Option<&str>) {
        let at = dir.join("driver");
        let _ = fs::remove_file(&at);
        if let Some(d) = driver {
            let drv = self.sys("bus/pci/drivers").join(d);
            fs::create_dir_all(&drv).unwrap();
            link(&drv, &at);
        }
    }

    pub fn join_group(&self, dir: &Path, g: u32) {
        let gdir = self.sys("kernel/iommu_groups").join(g.to_string());
        fs::create_dir_all(gdir.join("devices")).unwrap();
        link(&gdir, &dir.join("iommu_group"));
        link(dir, &gdir.join("devices").join(dir.file_name().unwrap()));
    }

    /// `/dev/vfio/N`, present once a device of the group is bound to vfio.
    pub fn group_node(&self, g: u32) {
        fs::write(self.roots.dev.join("vfio").join(g.to_string()), "").unwrap();
    }

    /// Registers `vfioN` for a device with the given sysfs devnum; `node` gives the
    /// numbers of the `/dev/vfio/devices/vfioN` node (None: no node).
    pub fn cdev(&self, dir: &Path, n: u32, sysfs_dev: (u32, u32), node: Option<(u32, u32)>) {
        let name = format!("vfio{n}");
        let vd = dir.join("vfio-dev").join(&name);
        fs::create_dir_all(&vd).unwrap();
        fs::write(vd.join("dev"), format!("{}:{}\n", sysfs_dev.0, sysfs_dev.1)).unwrap();
        link(dir, &vd.join("device"));
        link(&vd, &self.sys("class/vfio-dev").join(&name));
        link(
            &vd,
            &self.sys(&format!("dev/char/{}:{}", sysfs_dev.0, sysfs_dev.1)),
        );
        if let Some((maj, min)) = node {
            mknod_char(&self.roots.dev.join("vfio/devices").join(&name), maj, min);
        }
    }

    /// A `vfio-dev/vfioN` entry without a `dev` number, as on a kernel without cdevs.
    pub fn vfio_dev_without_cdev(&self, dir: &Path, n: u32) {
        let vd = dir.join("vfio-dev").join(format!("vfio{n}"));
        fs::create_dir_all(&vd).unwrap();
        link(&vd, &self.sys("class/vfio-dev").join(format!("vfio{n}")));
    }

    /// A mediated device under a parent directory, in its own group.
    pub fn mdev(&self, parent: &Path, uuid: &str, group: u32) -> PathBuf {
        let dir = parent.join(uuid);
        fs::create_dir_all(&dir).unwrap();
        link(&self.sys("bus/mdev"), &dir.join("subsystem"));
        link(&self.sys("bus/mdev/drivers/mtty"), &dir.join("driver"));
        let types = parent.join("mdev_supported_types/mtty-2");
        fs::create_dir_all(&types).unwrap();
        link(&types, &dir.join("mdev_type"));
        link(&dir, &self.sys("bus/mdev/devices").join(uuid));
        self.join_group(&dir, group);
        dir
    }

    /// A device on another bus with a given name.
    pub fn other_bus_device(&self, bus: &str, name: &str) -> PathBuf {
        let dir = self.sys("devices/platform").join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(self.sys(&format!("bus/{bus}/devices"))).unwrap();
        link(&self.sys(&format!("bus/{bus}")), &dir.join("subsystem"));
        link(&dir, &self.sys(&format!("bus/{bus}/devices")).join(name));
        dir
    }

    /// `/dev/vfio/<bus>/<name>` as the udev rule makes it: a symlink to `target`
    /// (relative to the link's directory, like udev's `../devices/vfioN`).
    pub fn bus_link(&self, bus: &str, name: &str, target: &str) -> PathBuf {
        let at = self.roots.dev.join("vfio").join(bus).join(name);
        link(Path::new(target), &at);
        at
    }

    /// `/sys/dev/char/MAJ:MIN` pointing at a sysfs directory.
    pub fn char_link(&self, devnum: (u32, u32), target: &Path) {
        fs::create_dir_all(target).unwrap();
        link(
            target,
            &self.sys(&format!("dev/char/{}:{}", devnum.0, devnum.1)),
        );
    }
}
