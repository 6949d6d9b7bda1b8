//! Guest RAM: the guest-physical layout around the 32-bit PCI hole, the e820 map the guest
//! kernel sees, and the (optionally hugepage-backed) host mappings behind it.
//!
//! # Guest-physical layout
//!
//! ```text
//! 0                  RAM (low)      boot structures, kernel, initramfs; see boot::layout
//! 0x9_fc00           reserved       EBDA (MP table) and the legacy VGA/BIOS hole up to 1 MiB
//! 0x10_0000          RAM (low)      up to min(size, 3 GiB)
//! 0xc000_0000        MMIO32         32-bit PCI BAR window (a gap in the e820 map), 768 MiB
//! 0xf000_0000        ECAM           PCIe config space of buses 0-15 (MCFG), e820-reserved
//! 0xfec0_0000        IOAPIC         one page, e820-reserved
//! 0xfee0_0000        LAPIC / MSI    the x86 MSI address window, 1 MiB, e820-reserved
//! 0x1_0000_0000      RAM (high)     the rest of the RAM when size > 3 GiB
//! align_up(end,1G)   MMIO64         64-bit BAR window, up to 2^39
//! ```
//!
//! **Why the hole starts at 3 GiB (`0xc000_0000`).** Passed-through devices often have
//! 32-bit-only BARs (and 64-bit ones that guests still like to place low). A 1 GiB window
//! fits several 256 MiB BARs and costs nothing on a 64-bit guest: RAM past 3 GiB simply
//! moves above 4 GiB. cloud-hypervisor makes the same choice; QEMU's i440fx uses 3.5 GiB
//! (512 MiB window), which is tight for GPUs and many-function devices.
//!
//! **Why everything ends below 2^39.** With VFIO, guest RAM is DMA-mapped with IOVA = GPA,
//! and so are BARs when peer-to-peer is wanted. The test bed's virtio-iommu (and many real
//! IOMMUs with 4-level tables in 39-bit mode) accept IOVAs up to 2^39 only, and reserve the
//! MSI window 0xfee0_0000..0xfeef_ffff. The layout keeps RAM out of that window and keeps
//! every RAM byte and the high BAR window below [`MAX_GUEST_PHYS_ADDR`].
//!
//! # The e820 map
//!
//! It is derived from the regions of the [`GuestMemoryMmap`] (so `boot::load` needs nothing
//! else): each region becomes RAM, except that the low region loses
//! [`EBDA_START`]..[`HIGH_RAM_START`] to a reserved entry (the MP table lives there and the
//! legacy hole must never be handed to the page allocator), and the IOAPIC page and the MSI
//! window are listed as reserved so the guest does not put BARs there. The 32-bit hole is
//! deliberately *not* listed: Linux treats e820 gaps below 4 GiB as the space available for
//! PCI ("[mem 0xc0000000-0xefffffff] available for PCI devices").
//!
//! # Backing
//!
//! Anonymous private mappings, not pre-faulted: pages are populated on first touch by the
//! guest, or all at once when VFIO pins guest RAM for DMA. `hugepages=on` maps each region
//! with `MAP_HUGETLB` (the default huge page size, usually 2 MiB) and without
//! `MAP_NORESERVE`, so a shortage of reserved huge pages fails at start-up with a clear
//! message instead of a `SIGBUS` in the middle of the guest's life. Without hugepages the
//! regions are `MADV_HUGEPAGE` (transparent huge pages make the nested page tables and the
//! VFIO pin cheaper). All regions are `MADV_DONTDUMP`: a VMM core dump should not contain
//! gigabytes of guest memory. KSM (`MADV_MERGEABLE`) stays off, as it is by default:
//! merging pages that a device may DMA into is pointless once VFIO pins them.

use std::io;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use devices::size::{human, PAGE_SIZE};

/// Start of the Extended BIOS Data Area. Linux scans its first KiB for the MP floating
/// pointer; from here up to 1 MiB the e820 map says "reserved".
pub const EBDA_START: u64 = 0x9_fc00;
/// First byte above the legacy hole (1 MiB): where "high memory" of the boot protocol starts.
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// Start of the 32-bit PCI hole: RAM below 4 GiB ends here.
pub const MMIO32_START: u64 = 0xc000_0000;
/// IOAPIC registers (one page).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Size of the IOAPIC register window listed as reserved.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Local APIC registers, and the start of the x86 MSI address window.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Start of the x86 MSI window (an MSI is a DMA write into 0xfeeX_XXXX).
pub const MSI_WINDOW_START: u64 = 0xfee0_0000;
/// Size of the MSI window; IOMMUs reserve exactly this range.
pub const MSI_WINDOW_SIZE: u64 = 0x10_0000;
/// The PCIe ECAM window (ACPI MCFG): 1 MiB of config space per bus, buses
/// 0..[`ECAM_BUSES`], e820-reserved so Linux accepts it. Above the 32-bit BAR window,
/// aligned to its size.
pub const ECAM_START: u64 = 0xf000_0000;
/// Buses the ECAM window covers (bus 0 is the only one populated today; the rest are
/// room for bridges).
pub const ECAM_BUSES: u64 = 16;
/// Buses the firmware tables describe (MCFG, the root bridge's `_CRS`): only the
/// populated ones, bus 0 and one secondary bus per hot-plug root port. Linux scans every
/// bus up to the MCFG's last for devices behind "peer bridges" (32 config reads per bus,
/// two exits each over 0xcf8/0xcfc): describing all 16 cost 960 of the 1797 exits of a
/// boot without a device.
pub fn pci_buses(pcie_ports: u8) -> u8 {
    1 + pcie_ports.min(ECAM_BUSES as u8 - 1)
}
/// Most PCIe root ports a VM gets (`--pcie-ports`): each takes a slot on bus 0 and a bus
/// number, and the ECAM window has room for 15 buses below bus 0; 8 keeps slots for the
/// `--device`s (the same bound `--device ...,port=N` is checked against).
pub const MAX_PCIE_PORTS: u8 = devices::vfio::naming::MAX_PORT;
const _: () = assert!((MAX_PCIE_PORTS as u64) < ECAM_BUSES);
/// Size of the ECAM window.
pub const ECAM_SIZE: u64 = ECAM_BUSES << 20;
/// The 32-bit BAR window: from [`MMIO32_START`] up to the ECAM window (768 MiB).
pub const MMIO32_SIZE: u64 = ECAM_START - MMIO32_START;
/// 4 GiB: where the part of RAM that does not fit below the hole continues.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// The guest-physical limit when nothing better is known (the config check, `--dry-run`):
/// 2^39, the smallest IOVA space seen on IOMMUs passvm is used with (virtio-iommu,
/// VT-d 39-bit). A VM's real limit comes from its host ([`phys_limit`]).
pub const MAX_GUEST_PHYS_ADDR: u64 = 1 << 39;
/// No guest-physical address goes above 2^52, the architectural MAXPHYADDR limit.
pub const ARCH_PHYS_LIMIT: u64 = 1 << 52;
/// Alignment of the 64-bit BAR window's start.
pub const MMIO64_ALIGN: u64 = 1 << 30;
/// The 64-bit BAR window never gets smaller than this; it bounds the RAM size.
pub const MIN_MMIO64_SIZE: u64 = 64 << 30;

/// Smallest guest that can hold a kernel (loaded at 16 MiB), an initramfs and the boot
/// structures.
pub const MIN_MEMORY_SIZE: u64 = 32 << 20;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved ranges.
pub const E820_RESERVED: u32 = 2;

/// Errors from creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is below the minimum.
    #[error("guest memory of {} is too small: passvm needs at least {min} MiB to load a Linux kernel; use --memory size=512M or more", human(*size), min = MIN_MEMORY_SIZE >> 20)]
    TooSmall {
        /// Requested size in bytes.
        size: u64,
    },
    /// The size does not fit below the guest-physical limit with the MMIO windows.
    #[error("guest memory of {} is too large: RAM and a 64-bit BAR window of at least {} must stay below {limit:#x} (the smaller of the host CPU's physical address width and the IOMMU's IOVA range), so at most {} GiB here; use a smaller --memory size", human(*size), human(min_mmio64(*limit)), max_memory_size(*limit) >> 30)]
    TooLarge {
        /// Requested size in bytes.
        size: u64,
        /// The guest-physical limit it had to fit below.
        limit: u64,
    },
    /// The size is not a whole number of pages.
    #[error("guest memory of {} is not a multiple of {} KiB; round --memory size to whole {unit}", human(*size), align >> 10, unit = if *align > PAGE_SIZE { "huge pages (e.g. size=512M)" } else { "pages (e.g. size=512M)" })]
    Unaligned {
        /// Requested size in bytes.
        size: u64,
        /// Required alignment in bytes.
        align: u64,
    },
    /// Not enough huge pages are reserved for a hugetlb mapping.
    #[error("cannot back {mib} MiB of guest RAM with {page_kib} KiB huge pages: {free} free huge pages ({free_mib} MiB) are reserved on the host; reserve enough with `echo {needed} | sudo tee /proc/sys/vm/nr_hugepages`, or drop hugepages=on", mib = size >> 20, free_mib = free * page_kib / 1024, needed = needed_total)]
    HugepagesUnavailable {
        /// Bytes requested.
        size: u64,
        /// Huge page size in KiB.
        page_kib: u64,
        /// `HugePages_Free` when the mapping failed.
        free: u64,
        /// A `nr_hugepages` value that would be enough (current total + missing).
        needed_total: u64,
    },
    /// mmap failed for another reason.
    #[error("cannot map {mib} MiB of guest RAM{huge}: {source}; check free memory and `ulimit -v`", mib = size >> 20, huge = if *hugepages { " on huge pages" } else { "" })]
    Mmap {
        /// Bytes requested.
        size: u64,
        /// Whether hugepages were asked for.
        hugepages: bool,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// vm-memory refused the region set (overlap or overflow; a bug in the layout).
    #[error("cannot assemble guest memory regions: {0}")]
    Regions(String),
}

/// One range of the e820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest-physical byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// A guest-physical address range `[start, start + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl AddrRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Where RAM and the BAR windows go for a guest of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM ranges, ascending: one below the hole, and one from 4 GiB when the size needs it.
    pub ram: Vec<AddrRange>,
    /// Window for 32-bit (non-prefetchable or not 64-bit capable) BARs.
    pub mmio32: AddrRange,
    /// Window for 64-bit BARs, above RAM and below [`MAX_GUEST_PHYS_ADDR`].
    pub mmio64: AddrRange,
}

/// The guest-physical limit of a VM: the smaller of `2^host_phys_bits` (the CPU's
/// MAXPHYADDR, which KVM passes to the guest) and `iova_end`, the end of the IOMMU's
/// usable IOVA range that holds the RAM above 4 GiB (guest RAM is DMA-mapped IOVA = GPA,
/// and BARs would be for peer-to-peer), when devices are passed through.
pub fn phys_limit(host_phys_bits: u8, iova_end: Option<u64>) -> u64 {
    let host = 1u64
        .checked_shl(u32::from(host_phys_bits))
        .unwrap_or(ARCH_PHYS_LIMIT)
        .min(ARCH_PHYS_LIMIT);
    iova_end.map_or(host, |e| e.min(host))
}

/// The smallest 64-bit BAR window a layout keeps under `limit`: 64 GiB, or a quarter of
/// the space on a host whose limit is small.
pub fn min_mmio64(limit: u64) -> u64 {
    MIN_MMIO64_SIZE.min(limit / 4)
}

/// The largest RAM that fits below `limit` with the 32-bit hole and the smallest 64-bit
/// window.
pub fn max_memory_size(limit: u64) -> u64 {
    limit
        .saturating_sub(min_mmio64(limit) + MMIO64_ALIGN)
        .saturating_sub(RAM_64BIT_START - MMIO32_START)
}

impl MemoryLayout {
    /// Computes the layout for `size` bytes of RAM below the default limit
    /// ([`MAX_GUEST_PHYS_ADDR`]), validating the size.
    #[cfg(test)]
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        Self::with_limit(size, MAX_GUEST_PHYS_ADDR)
    }

    /// Computes the layout for `size` bytes of RAM with everything below `limit`
    /// ([`phys_limit`]): the 64-bit BAR window runs from above RAM up to it.
    pub fn with_limit(size: u64, limit: u64) -> Result<Self, MemoryError> {
        if size < MIN_MEMORY_SIZE {
            return Err(MemoryError::TooSmall { size });
        }
        if size > max_memory_size(limit) {
            return Err(MemoryError::TooLarge { size, limit });
        }
        if size % PAGE_SIZE != 0 {
            return Err(MemoryError::Unaligned {
                size,
                align: PAGE_SIZE,
            });
        }
        let low = size.min(MMIO32_START);
        let mut ram = vec![AddrRange {
            start: 0,
            size: low,
        }];
        if size > low {
            ram.push(AddrRange {
                start: RAM_64BIT_START,
                size: size - low,
            });
        }
        let ram_end = ram.last().map_or(0, AddrRange::end).max(RAM_64BIT_START);
        let mmio64_start = align_up(ram_end, MMIO64_ALIGN);
        Ok(MemoryLayout {
            ram,
            mmio32: AddrRange {
                start: MMIO32_START,
                size: MMIO32_SIZE,
            },
            mmio64: AddrRange {
                start: mmio64_start,
                size: limit.saturating_sub(mmio64_start),
            },
        })
    }
}

/// Builds the e820 map for RAM ranges given in ascending order (see the module docs).
pub(crate) fn e820_from_ram(ram: impl Iterator<Item = AddrRange>) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for r in ram {
        // Only the low region can contain the EBDA / legacy hole.
        if r.start < HIGH_RAM_START && r.end() > EBDA_START {
            if r.start < EBDA_START {
                map.push(E820Entry {
                    addr: r.start,
                    size: EBDA_START - r.start,
                    kind: E820_RAM,
                });
            }
            map.push(E820Entry {
                addr: EBDA_START,
                size: HIGH_RAM_START - EBDA_START,
                kind: E820_RESERVED,
            });
            if r.end() > HIGH_RAM_START {
                map.push(E820Entry {
                    addr: HIGH_RAM_START,
                    size: r.end() - HIGH_RAM_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: r.start,
                size: r.size,
                kind: E820_RAM,
            });
        }
    }
    // Firmware-style reservations inside the 32-bit hole; the list stays sorted because
    // RAM below 4 GiB ends at MMIO32_START at the latest.
    let reserved = [
        E820Entry {
            addr: ECAM_START,
            size: ECAM_SIZE,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: IOAPIC_START,
            size: IOAPIC_SIZE,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: MSI_WINDOW_START,
            size: MSI_WINDOW_SIZE,
            kind: E820_RESERVED,
        },
    ];
    let pos = map
        .iter()
        .position(|e| e.addr >= RAM_64BIT_START)
        .unwrap_or(map.len());
    map.splice(pos..pos, reserved);
    map
}

/// The e820 map of an existing guest memory (see the module docs).
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut ram: Vec<AddrRange> = mem
        .iter()
        .map(|r| AddrRange {
            start: r.start_addr().raw_value(),
            size: r.len(),
        })
        .collect();
    ram.sort_by_key(|r| r.start);
    e820_from_ram(ram.into_iter())
}

/// Top of the RAM below the 32-bit hole.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|&end| end <= MMIO32_START)
        .max()
        .unwrap_or(0)
}

/// Allocates guest RAM of `size` bytes laid out around the 32-bit hole below the default
/// limit (see [`MemoryLayout`]).
#[cfg(test)]
pub fn create_guest_memory(size: u64, hugepages: bool) -> Result<GuestMemoryMmap, MemoryError> {
    create_guest_memory_in(&MemoryLayout::new(size)?, hugepages)
}

/// Allocates the guest RAM of `layout`.
pub fn create_guest_memory_in(
    layout: &MemoryLayout,
    hugepages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let size: u64 = layout.ram.iter().map(|r| r.size).sum();
    let huge_page_size = if hugepages {
        let hp = hugepage_size();
        if size % hp != 0 {
            return Err(MemoryError::Unaligned { size, align: hp });
        }
        Some(hp)
    } else {
        None
    };

    let mut regions = Vec::with_capacity(layout.ram.len());
    for r in &layout.ram {
        let region = map_region(r.size, huge_page_size)?;
        let region = GuestRegionMmap::new(region, GuestAddress(r.start))
            .ok_or_else(|| MemoryError::Regions(format!("region at {:#x} overflows", r.start)))?;
        advise(&region, hugepages);
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Regions(e.to_string()))
}

fn map_region(
    size: u64,
    huge_page_size: Option<u64>,
) -> Result<vm_memory::MmapRegion, MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge {
        size,
        limit: MAX_GUEST_PHYS_ADDR,
    })?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let builder = match huge_page_size {
        // No MAP_NORESERVE: the kernel must reserve the huge pages now, so a shortage is
        // an mmap error here rather than a SIGBUS when the guest touches the page.
        Some(_) => MmapRegionBuilder::new(len)
            .with_mmap_prot(prot)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB)
            .with_hugetlbfs(true),
        None => MmapRegionBuilder::new(len)
            .with_mmap_prot(prot)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
    };
    builder.build().map_err(|e| {
        let source = match e {
            vm_memory::mmap::MmapRegionError::Mmap(io) => io,
            other => io::Error::other(other.to_string()),
        };
        match huge_page_size {
            Some(hp) if matches!(source.raw_os_error(), Some(libc::ENOMEM | libc::EINVAL)) => {
                let (total, free) = hugepage_counts();
                let missing = size.div_ceil(hp).saturating_sub(free);
                MemoryError::HugepagesUnavailable {
                    size,
                    page_kib: hp >> 10,
                    free,
                    needed_total: total + missing,
                }
            }
            _ => MemoryError::Mmap {
                size,
                hugepages: huge_page_size.is_some(),
                source,
            },
        }
    })
}

/// Best-effort madvise hints; failures only cost performance or a larger core dump.
fn advise(region: &GuestRegionMmap, hugepages: bool) {
    let addr = region.as_ptr().cast::<libc::c_void>();
    let len = region.size();
    let mut advice = vec![(libc::MADV_DONTDUMP, "MADV_DONTDUMP")];
    if !hugepages {
        advice.push((libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"));
    }
    for (adv, name) in advice {
        // SAFETY: `addr..addr+len` is exactly the mapping owned by `region`; these advice
        // values change paging policy only, never the contents or validity of the memory.
        let rc = unsafe { libc::madvise(addr, len, adv) };
        if rc != 0 {
            log::debug!(
                "madvise({name}) on guest RAM failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// The default huge page size, from /proc/meminfo (2 MiB when it cannot be read).
pub fn hugepage_size() -> u64 {
    meminfo_value("Hugepagesize:").map_or(2 << 20, |kib| kib << 10)
}

/// (`HugePages_Total`, `HugePages_Free`) from /proc/meminfo, zeros when unreadable.
fn hugepage_counts() -> (u64, u64) {
    (
        meminfo_value("HugePages_Total:").unwrap_or(0),
        meminfo_value("HugePages_Free:").unwrap_or(0),
    )
}

fn meminfo_value(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: &AddrRange, b: &AddrRange) -> bool {
        a.start < b.end() && b.start < a.end()
    }

    fn e820_of(layout: &MemoryLayout) -> Vec<E820Entry> {
        e820_from_ram(layout.ram.iter().copied())
    }

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn assert_sane(size: u64) {
        let layout = MemoryLayout::new(size).unwrap();
        let map = e820_of(&layout);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // The EBDA/legacy part of the low region is not RAM to the guest.
        assert_eq!(ram, size - (HIGH_RAM_START - EBDA_START), "size {size:#x}");
        for w in map.windows(2) {
            assert!(
                w[0].addr + w[0].size <= w[1].addr,
                "unsorted/overlap: {map:x?}"
            );
        }
        let forbidden = [
            AddrRange {
                start: 0xa_0000,
                size: HIGH_RAM_START - 0xa_0000,
            },
            layout.mmio32,
            AddrRange {
                start: IOAPIC_START,
                size: IOAPIC_SIZE,
            },
            AddrRange {
                start: MSI_WINDOW_START,
                size: MSI_WINDOW_SIZE,
            },
            layout.mmio64,
        ];
        for e in map.iter().filter(|e| e.kind == E820_RAM) {
            let r = AddrRange {
                start: e.addr,
                size: e.size,
            };
            for f in &forbidden {
                assert!(
                    !overlaps(&r, f),
                    "RAM {r:x?} overlaps {f:x?} (size {size:#x})"
                );
            }
            assert!(r.end() <= MAX_GUEST_PHYS_ADDR);
        }
        assert!(map
            .iter()
            .any(|e| e.kind == E820_RESERVED && e.addr == MSI_WINDOW_START));
        assert!(map
            .iter()
            .any(|e| e.kind == E820_RESERVED && e.addr == IOAPIC_START));
        assert!(layout.mmio64.start >= RAM_64BIT_START);
        assert_eq!(layout.mmio64.start % MMIO64_ALIGN, 0);
        assert_eq!(layout.mmio64.end(), MAX_GUEST_PHYS_ADDR);
    }

    #[test]
    fn e820_respects_holes_for_common_sizes() {
        for size in [
            32 * MIB,
            256 * MIB,
            GIB,
            3 * GIB,
            3 * GIB + 512 * MIB,
            8 * GIB,
        ] {
            assert_sane(size);
        }
    }

    #[test]
    fn ram_splits_at_the_hole() {
        let l = MemoryLayout::new(GIB).unwrap();
        assert_eq!(
            l.ram,
            vec![AddrRange {
                start: 0,
                size: GIB
            }]
        );
        assert_eq!(l.mmio64.start, RAM_64BIT_START);

        let l = MemoryLayout::new(3 * GIB).unwrap();
        assert_eq!(l.ram.len(), 1, "exactly 3 GiB fits below the hole");

        let l = MemoryLayout::new(3 * GIB + 512 * MIB).unwrap();
        assert_eq!(
            l.ram,
            vec![
                AddrRange {
                    start: 0,
                    size: MMIO32_START
                },
                AddrRange {
                    start: RAM_64BIT_START,
                    size: 512 * MIB
                }
            ]
        );
        assert_eq!(l.mmio64.start, RAM_64BIT_START + GIB);

        let l = MemoryLayout::new(8 * GIB).unwrap();
        assert_eq!(l.ram[1].end(), RAM_64BIT_START + 5 * GIB);
        assert_eq!(l.mmio64.start, 9 * GIB);
    }

    #[test]
    fn e820_first_entries_are_the_legacy_split() {
        let map = e820_of(&MemoryLayout::new(256 * MIB).unwrap());
        assert_eq!(
            &map[..3],
            &[
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIGH_RAM_START - EBDA_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: HIGH_RAM_START,
                    size: 256 * MIB - HIGH_RAM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn bad_sizes_are_rejected_with_a_fix() {
        let e = MemoryLayout::new(MIB).unwrap_err();
        assert!(matches!(e, MemoryError::TooSmall { .. }));
        assert!(e.to_string().contains("--memory"));
        assert!(matches!(
            MemoryLayout::new(600 * GIB),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(matches!(
            MemoryLayout::new(256 * MIB + 1),
            Err(MemoryError::Unaligned { .. })
        ));
        assert!(MemoryLayout::new(max_memory_size(MAX_GUEST_PHYS_ADDR)).is_ok());
    }

    #[test]
    fn guest_memory_matches_the_layout() {
        let mem = create_guest_memory(3 * GIB + 512 * MIB, false).unwrap();
        let regions: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect();
        assert_eq!(
            regions,
            vec![(0, MMIO32_START), (RAM_64BIT_START, 512 * MIB)]
        );
        assert_eq!(
            e820_map(&mem),
            e820_of(&MemoryLayout::new(3 * GIB + 512 * MIB).unwrap())
        );
        assert_eq!(low_ram_end(&mem), MMIO32_START);
    }

    #[test]
    fn hugepages_without_reservation_name_nr_hugepages() {
        // More than is free, whatever this host reserved, so the refusal always happens.
        let (_, free) = hugepage_counts();
        let size = (free + 32) * hugepage_size();
        let e = create_guest_memory(size, true).unwrap_err();
        assert!(
            matches!(e, MemoryError::HugepagesUnavailable { .. }),
            "got {e:?}"
        );
        assert!(e.to_string().contains("/proc/sys/vm/nr_hugepages"), "{e}");
    }

    #[test]
    #[cfg_attr(
        passvm_no_free_hugepages,
        ignore = "needs 32 MiB of free huge pages when built: reserve them \
                  (echo 16 > /proc/sys/vm/nr_hugepages), then touch build/host_probe.rs"
    )]
    fn hugepages_back_guest_ram_when_reserved() {
        let size = 32 * MIB;
        let mem = create_guest_memory(size, true).expect("the free huge pages the build probe saw");
        let region = mem.iter().next().unwrap();
        assert_eq!(region.is_hugetlbfs(), Some(true));
        // Touch the memory: a hugetlb mapping that was not really reserved would SIGBUS here.
        vm_memory::Bytes::write_obj(&mem, 0x1234_5678u32, GuestAddress(size - 4)).unwrap();
    }

    #[test]
    fn hugepages_need_whole_huge_pages() {
        let e = create_guest_memory(64 * MIB + PAGE_SIZE, true).unwrap_err();
        assert!(matches!(e, MemoryError::Unaligned { .. }), "got {e:?}");
    }

    #[test]
    fn the_limit_is_the_smaller_of_the_cpu_and_the_iommu() {
        assert_eq!(phys_limit(39, None), 1 << 39);
        assert_eq!(
            phys_limit(46, Some(1 << 39)),
            1 << 39,
            "the bed's virtio-iommu"
        );
        assert_eq!(phys_limit(40, Some(1 << 48)), 1 << 40);
        assert_eq!(
            phys_limit(57, None),
            ARCH_PHYS_LIMIT,
            "capped at MAXPHYADDR's 52 bits"
        );
        assert_eq!(phys_limit(200, None), ARCH_PHYS_LIMIT);
    }

    #[test]
    fn the_64_bit_window_runs_up_to_the_limit_and_ram_must_leave_room() {
        let l = MemoryLayout::with_limit(8 * GIB, 1 << 46).unwrap();
        assert_eq!(l.mmio64.end(), 1 << 46);
        assert_eq!(l.mmio64.start, 9 * GIB, "above RAM, 1 GiB aligned");
        assert_eq!(
            MemoryLayout::with_limit(8 * GIB, 1 << 39)
                .unwrap()
                .mmio64
                .end(),
            MemoryLayout::new(8 * GIB).unwrap().mmio64.end()
        );
        // 600 GiB fits a 46-bit host, not a 39-bit one; the message names the limit.
        assert!(MemoryLayout::with_limit(600 * GIB, 1 << 46).is_ok());
        let e = MemoryLayout::with_limit(600 * GIB, 1 << 39)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("0x8000000000") && e.contains("at most 446 GiB"),
            "{e}"
        );
        // A tiny limit leaves a small window, never a negative one.
        let l = MemoryLayout::with_limit(GIB, 1 << 32).unwrap();
        assert_eq!(l.mmio64.size, 0);
    }
}
