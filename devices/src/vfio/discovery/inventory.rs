//! Every PCI and mediated device on the host, with its assignability: the data behind
//! `passvm devices`.

use std::fs;

use log::warn;

use super::assignable::{device_problems, CheckContext};
use super::class_names::is_host_side_bridge;
use super::irq_remap::{self, InterruptIsolation};
use super::links::{self, LinkState};
use super::model::Problem;
use super::model::ResolvedDevice;
use super::resolve::describe;
use super::sysfs::{dir_names, Roots};
use crate::vfio::memlock::HostLimits;

/// One device of the listing.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The device.
    pub device: ResolvedDevice,
    /// Why it cannot be assigned now (empty: assignable).
    pub problems: Vec<Problem>,
    /// A bridge that stays with the host; listed only with `--all`.
    pub bridge: bool,
    /// Its BARs and ROM, from sysfs `resource` (what the guest's windows must hold).
    pub bars: Vec<BarSize>,
    /// Its `/dev/vfio/<bus>/<name>` link (passvm's udev rule), checked.
    pub link: LinkState,
}

/// One implemented BAR of a PCI function, as the host kernel placed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSize {
    /// BAR 0-5, or 6 for the expansion ROM.
    pub index: u8,
    /// Bytes.
    pub size: u64,
    /// An I/O-port BAR.
    pub io: bool,
    /// A 64-bit memory BAR.
    pub mem64: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// `IORESOURCE_*` flags of sysfs `resource` lines (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x10_0000;

/// The BARs (lines 0-5) and the ROM (line 6) of a sysfs `resource` file: "start end
/// flags" in hex per line; unimplemented ones are all zeros and left out, as are lines
/// that do not parse.
pub fn parse_resource(text: &str) -> Vec<BarSize> {
    let hex = |w: &str| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok();
    text.lines()
        .take(7)
        .enumerate()
        .filter_map(|(i, line)| {
            let mut w = line.split_whitespace().map(hex);
            let (start, end, flags) = (w.next()??, w.next()??, w.next()??);
            if end <= start {
                return None;
            }
            Some(BarSize {
                index: i as u8,
                size: end - start + 1,
                io: flags & IORESOURCE_IO != 0,
                mem64: flags & IORESOURCE_MEM_64 != 0,
                prefetchable: flags & IORESOURCE_PREFETCH != 0,
            })
        })
        .collect()
}

/// The listing plus host-wide facts.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// PCI devices in address order, then mdevs.
    pub entries: Vec<Entry>,
    /// Interrupt remapping and its opt-in parameters.
    pub isolation: InterruptIsolation,
    /// This process's pinning limits.
    pub limits: HostLimits,
    /// Whether `/dev/iommu` exists.
    pub iommufd: bool,
}

/// Lists and checks every PCI and mdev device under `roots`.
pub fn inventory(roots: &Roots) -> Inventory {
    let mut entries = Vec::new();
    let ctx = CheckContext {
        roots,
        backend: None,
        becoming_vfio: &[],
        open_nodes: true,
    };
    for bus in ["pci", "mdev"] {
        let dir = roots.sys_path(format!("bus/{bus}/devices"));
        for name in dir_names(&dir) {
            let Ok(real) = fs::canonicalize(dir.join(&name)) else {
                continue;
            };
            match describe(&name, real, roots) {
                Ok(device) => {
                    let problems = device_problems(&device, &ctx);
                    let bridge = device.class.is_some_and(is_host_side_bridge);
                    let bars = fs::read_to_string(device.sysfs.join("resource"))
                        .map(|t| parse_resource(&t))
                        .unwrap_or_default();
                    let link = links::check(roots, bus, &device.name, Some(&device.sysfs));
                    entries.push(Entry {
                        device,
                        problems,
                        bridge,
                        bars,
                        link,
                    });
                }
                Err(e) => warn!("skipping {name}: {e}"),
            }
        }
    }
    Inventory {
        entries,
        isolation: irq_remap::detect(roots),
        limits: HostLimits::current(),
        iommufd: roots.dev_path("iommu").exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lines_give_the_implemented_bars_and_the_rom() {
        // A GPU as sysfs shows it: 16 MiB BAR0, 8 GiB 64-bit prefetchable BAR1, 32 MiB
        // BAR3, 128 ports at BAR5, a 512 KiB ROM, then a bridge window line (ignored).
        let text = "\
0x00000000fb000000 0x00000000fbffffff 0x0000000000040200
0x0000006000000000 0x00000061ffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000006200000000 0x0000006201ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x000000000000e000 0x000000000000e07f 0x0000000000040101
0x00000000fc000000 0x00000000fc07ffff 0x0000000000046200
0x0000000000000000 0x0000000000000000 0x0000000000000000
not a resource line
";
        let bars = parse_resource(text);
        let got: Vec<_> = bars
            .iter()
            .map(|b| (b.index, b.size, b.io, b.mem64, b.prefetchable))
            .collect();
        assert_eq!(
            got,
            [
                (0, 16 << 20, false, false, false),
                (1, 8 << 30, false, true, true),
                (3, 32 << 20, false, true, true),
                (5, 128, true, false, false),
                (6, 512 << 10, false, false, true),
            ]
        );
        assert!(parse_resource("").is_empty());
        assert!(
            parse_resource("0x10 0x0f 0x200\nzz").is_empty(),
            "end before start, junk"
        );
    }
}
