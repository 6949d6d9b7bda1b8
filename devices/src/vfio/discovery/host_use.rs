//! What the host still uses a PCI device for, before `passvm bind` or `managed=on` takes
//! it from its driver: a careless `--device` naming the root NVMe drive or the only NIC
//! must not take the host's filesystem or network with it.
//!
//! Each use names the thing and how the host uses it: a mounted filesystem or swap on
//! one of the device's disks or partitions, a disk held by device-mapper, RAID or LVM, a
//! network interface that is up with addresses or routes, the boot VGA device, a console.
//! Everything is read from sysfs and procfs below [`Roots`], so tests run on a fake tree.

use std::fs;
use std::path::{Path, PathBuf};

use super::sysfs::{attr, parse_hex, Roots};

/// How deep below the PCI device's directory its disks, interfaces and ttys are looked
/// for (nvme: `nvme/nvme0/nvme0n1`; virtio: `virtio0/block/vda`; a NIC: `net/eth0`).
const MAX_DEPTH: usize = 5;

/// The host's uses of the device at `dev_dir` (its sysfs directory), one line each;
/// empty when the host can let it go.
pub fn host_uses(dev_dir: &Path, roots: &Roots) -> Vec<String> {
    let mut uses = Vec::new();
    if attr(dev_dir, "boot_vga").as_deref() == Some("1") {
        uses.push("it is the boot VGA device (the host's display and console)".into());
    }
    let mut disks = Vec::new();
    let mut ifaces = Vec::new();
    let mut ttys = Vec::new();
    collect(dev_dir, 0, &mut disks, &mut ifaces, &mut ttys);
    block_uses(&disks, roots, &mut uses);
    net_uses(&ifaces, roots, &mut uses);
    console_uses(&ttys, roots, &mut uses);
    uses
}

/// Finds the class devices below a PCI device: `block/<disk>`, `net/<iface>`,
/// `tty/<name>` directories (and nvme's `nvme/nvmeN/nvmeNnM` disks, which sit directly
/// in their controller's directory).
fn collect(
    dir: &Path,
    depth: usize,
    disks: &mut Vec<PathBuf>,
    ifaces: &mut Vec<PathBuf>,
    ttys: &mut Vec<String>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        // Real directories only: sysfs links (driver, subsystem, firmware_node...) lead
        // out of the device and back up the tree.
        let Ok(t) = e.file_type() else { continue };
        if !t.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        match name.as_str() {
            "block" => disks.extend(subdirs(&path)),
            "net" => ifaces.extend(subdirs(&path)),
            "tty" => ttys.extend(subdirs(&path).iter().filter_map(|p| file_name(p))),
            // A disk of an nvme controller: it has a dev number and no "partition" file.
            _ if path.join("dev").is_file()
                && path.join("size").is_file()
                && !path.join("partition").exists() =>
            {
                disks.push(path.clone());
                collect(&path, depth + 1, disks, ifaces, ttys);
            }
            _ => collect(&path, depth + 1, disks, ifaces, ttys),
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> Option<String> {
    p.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Disks and their partitions: (name, "major:minor", sysfs directory).
fn block_devices(disks: &[PathBuf]) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for d in disks {
        let mut all = vec![d.clone()];
        all.extend(
            subdirs(d)
                .into_iter()
                .filter(|p| p.join("partition").exists()),
        );
        for p in all {
            if let (Some(name), Some(dev)) = (file_name(&p), attr(&p, "dev")) {
                if !out.iter().any(|(n, _, _)| *n == name) {
                    out.push((name, dev, p));
                }
            }
        }
    }
    out
}

fn block_uses(disks: &[PathBuf], roots: &Roots, uses: &mut Vec<String>) {
    let devs = block_devices(disks);
    if devs.is_empty() {
        return;
    }
    // mountinfo: "36 35 259:2 / /boot rw,relatime - ext4 /dev/nvme0n1p2 rw"
    let mountinfo = fs::read_to_string(roots.proc.join("self/mountinfo")).unwrap_or_default();
    // swaps: "/dev/nvme0n1p3  partition  8388604  0  -2" after a header line
    let swaps = fs::read_to_string(roots.proc.join("swaps")).unwrap_or_default();
    for (name, dev, dir) in &devs {
        let mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&dev.as_str())).then(|| f.get(4).copied())?
            })
            .collect();
        if !mounts.is_empty() {
            uses.push(format!(
                "{name} is mounted at {} (unmount it first)",
                mounts.join(", ")
            ));
        }
        if swaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .any(|p| Path::new(p).file_name().is_some_and(|n| n == name.as_str()))
        {
            uses.push(format!("{name} is in use as swap (swapoff it first)"));
        }
        let holders: Vec<String> = subdirs(&dir.join("holders"))
            .iter()
            .filter_map(|p| file_name(p))
            .collect();
        if !holders.is_empty() {
            uses.push(format!(
                "{name} is held by {} (device-mapper, RAID or LVM: stop those first)",
                holders.join(", ")
            ));
        }
    }
}

/// `IFF_UP` in `/sys/class/net/<iface>/flags`.
const IFF_UP: u32 = 0x1;

fn net_uses(ifaces: &[PathBuf], roots: &Roots, uses: &mut Vec<String>) {
    if ifaces.is_empty() {
        return;
    }
    // route: "Iface Destination Gateway ..." then one line per IPv4 route.
    let routes = fs::read_to_string(roots.proc.join("net/route")).unwrap_or_default();
    // if_inet6: "fe800000000000000000000000000001 02 40 20 80 eth0" (scope 0x20: link).
    let inet6 = fs::read_to_string(roots.proc.join("net/if_inet6")).unwrap_or_default();
    for dir in ifaces {
        let Some(iface) = file_name(dir) else {
            continue;
        };
        let up = attr(dir, "flags")
            .and_then(|f| parse_hex(&f))
            .is_some_and(|f| f & IFF_UP != 0);
        if !up {
            continue;
        }
        let v4 = routes
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().next() == Some(iface.as_str()))
            .count();
        let v6 = inet6
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(5) == Some(&iface.as_str()) && f.get(3) != Some(&"20")
            })
            .count();
        if v4 > 0 || v6 > 0 {
            uses.push(format!(
                "network interface {iface} is up with {v4} IPv4 route(s) and {v6} IPv6 \
                 address(es) beyond link-local (the host would lose that network: take it \
                 down with `ip link set {iface} down` first)"
            ));
        }
    }
}

fn console_uses(ttys: &[String], roots: &Roots, uses: &mut Vec<String>) {
    // consoles: "ttyS0                -W- (EC p a)    4:64"
    let consoles = fs::read_to_string(roots.proc.join("consoles")).unwrap_or_default();
    for tty in ttys {
        if consoles
            .lines()
            .any(|l| l.split_whitespace().next() == Some(tty.as_str()))
        {
            uses.push(format!("{tty} is a host console (see /proc/consoles)"));
        }
    }
}
