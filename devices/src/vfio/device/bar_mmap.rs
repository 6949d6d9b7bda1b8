//! Which parts of a BAR the guest touches directly (mmapped device memory in a KVM slot)
//! and which trap, and the host mappings themselves.
//!
//! Mapping rules, in order:
//! - a region without `VFIO_REGION_INFO_FLAG_MMAP` traps entirely;
//! - the kernel's sparse-mmap list, when present, is the upper bound of what may be
//!   mapped; otherwise the whole region;
//! - a region smaller than a page is mapped as one full page at offset 0 (the kernel only
//!   offers mmap for it when the rest of the page is reserved, and our allocator gives
//!   the BAR its own page), unless something in it must trap;
//! - areas shrink inward to page boundaries (a KVM slot is page-granular);
//! - the pages holding the MSI-X table and PBA are **always** cut out, even when the
//!   kernel says `MSIX_MAPPABLE`: the guest's table is emulated, and a mapped table page
//!   would send its writes to the real table.

use std::os::unix::io::RawFd;

use crate::vfio::device_fd::{MmapArea, RegionInfo};

use crate::size::PAGE_SIZE;

fn align_down(v: u64) -> u64 {
    v & !(PAGE_SIZE - 1)
}

fn align_up(v: u64) -> Option<u64> {
    Some(v.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

/// The page-aligned areas of a BAR to mmap, given the ranges `(offset, len)` that must trap.
pub fn mmap_areas(info: &RegionInfo, must_trap: &[(u64, u64)]) -> Vec<MmapArea> {
    if !info.mappable() || info.size == 0 {
        return Vec::new();
    }
    if info.size < PAGE_SIZE {
        let whole_at_zero = match &info.sparse_areas {
            None => true,
            Some(a) => a.iter().any(|a| a.offset == 0 && a.size >= info.size),
        };
        return if whole_at_zero && must_trap.iter().all(|&(_, len)| len == 0) {
            vec![MmapArea {
                offset: 0,
                size: PAGE_SIZE,
            }]
        } else {
            Vec::new()
        };
    }
    let base = match &info.sparse_areas {
        Some(a) => a.clone(),
        None => vec![MmapArea {
            offset: 0,
            size: info.size,
        }],
    };
    let mut areas: Vec<(u64, u64)> = base
        .iter()
        .filter_map(|a| {
            let end = a.offset.checked_add(a.size)?.min(info.size);
            let start = align_up(a.offset)?;
            let end = align_down(end);
            (start < end).then_some((start, end))
        })
        .collect();
    for &(off, len) in must_trap {
        if len == 0 {
            continue;
        }
        let hole_start = align_down(off);
        let hole_end = off.checked_add(len).and_then(align_up).unwrap_or(u64::MAX);
        areas = areas
            .into_iter()
            .flat_map(|(s, e)| {
                let mut out = Vec::with_capacity(2);
                if hole_end <= s || hole_start >= e {
                    out.push((s, e));
                } else {
                    if s < hole_start {
                        out.push((s, hole_start));
                    }
                    if hole_end < e {
                        out.push((hole_end, e));
                    }
                }
                out
            })
            .collect();
    }
    areas.sort_unstable();
    areas
        .into_iter()
        .map(|(s, e)| MmapArea {
            offset: s,
            size: e - s,
        })
        .collect()
}

/// One mmapped area of a BAR, with the KVM slot it is in while the BAR decodes.
#[derive(Debug)]
pub struct MappedArea {
    /// Offset inside the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    host: *mut libc::c_void,
    /// The KVM memory slot while mapped into the guest.
    pub slot: Option<u32>,
}

// SAFETY: the pointer is only an address handed to KVM and to munmap; it is never
// dereferenced by this process, so moving it between threads cannot race.
unsafe impl Send for MappedArea {}
// SAFETY: as above; shared references only read the address.
unsafe impl Sync for MappedArea {}

impl MappedArea {
    /// mmaps `area` of a region that starts at `region_offset` in the device fd.
    pub fn map(
        fd: RawFd,
        region_offset: u64,
        area: MmapArea,
        writable: bool,
    ) -> std::io::Result<Self> {
        let file_off = region_offset
            .checked_add(area.offset)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let len = usize::try_from(area.size)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let align = huge_alignment(area);
        let host = map_aligned(fd, file_off, len, prot, align, area.offset % align)?;
        Ok(Self {
            offset: area.offset,
            size: area.size,
            host,
            slot: None,
        })
    }

    /// The host address for a KVM slot.
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }
}

/// The virtual-address alignment that lets the kernel map `area` with huge page-table
/// entries: the largest of 1 GiB and 2 MiB that fits in the area, or a page. The mapping
/// is placed so that its address agrees with the area's offset in the BAR modulo that size
/// (a BAR is naturally aligned in physical memory, so the huge-aligned parts of the area
/// are then huge-aligned in both address spaces).
///
/// Why: vfio-pci (Linux 6.12+) fills a BAR mapping with PMD or PUD entries where the
/// virtual and physical addresses agree modulo the entry size; an address the kernel picks
/// is only page-aligned, so a 16 GiB BAR costs millions of faults (each also a KVM MMU
/// fault in the guest) and as many TLB entries. QEMU aligns its BAR mmaps for the same
/// reason.
pub fn huge_alignment(area: MmapArea) -> u64 {
    const HUGE: [u64; 2] = [1 << 30, 2 << 20];
    HUGE.into_iter()
        .find(|&a| area.size >= a)
        .unwrap_or(PAGE_SIZE)
}

/// mmaps `len` bytes of `fd` at `file_off` at an address equal to `phase` modulo `align`
/// (a power of two; `phase < align`): a PROT_NONE reservation of `len + align` bytes, the
/// shared mapping placed inside it with MAP_FIXED, the slack on both sides given back.
fn map_aligned(
    fd: RawFd,
    file_off: libc::off_t,
    len: usize,
    prot: libc::c_int,
    align: u64,
    phase: u64,
) -> std::io::Result<*mut libc::c_void> {
    let (Ok(align), Ok(phase)) = (usize::try_from(align), usize::try_from(phase)) else {
        return Err(std::io::Error::from_raw_os_error(libc::EOVERFLOW));
    };
    let flags = libc::MAP_SHARED;
    if align <= PAGE_SIZE as usize {
        // SAFETY: a fresh shared mapping chosen by the kernel (addr NULL), of a device fd
        // we hold open; no existing Rust memory is affected. The result is checked.
        let host = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, file_off) };
        return if host == libc::MAP_FAILED {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(host)
        };
    }
    let span = len
        .checked_add(align)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: reserves fresh address space only (PROT_NONE, anonymous, never accessed);
    // no existing memory is affected. The result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // The first address at or after `base` that is `phase` modulo `align`: below
    // base + align, so `start + len` stays inside the reservation.
    let start = (base as usize)
        .saturating_sub(phase)
        .next_multiple_of(align)
        + phase;
    let start = if start < base as usize {
        start + align
    } else {
        start
    };
    // SAFETY: `start..start+len` lies inside the reservation just made (start < base +
    // align), which this function owns, so MAP_FIXED replaces only our own PROT_NONE pages.
    let host = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            prot,
            flags | libc::MAP_FIXED,
            fd,
            file_off,
        )
    };
    let err = (host == libc::MAP_FAILED).then(std::io::Error::last_os_error);
    let (head, tail_at) = (start - base as usize, start + len);
    let tail = base as usize + span - tail_at;
    // SAFETY: the head and tail are the unused parts of our own reservation (and on
    // failure the whole of it goes); nothing else lives there.
    unsafe {
        if err.is_some() {
            libc::munmap(base, span);
        } else {
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap(tail_at as *mut libc::c_void, tail);
            }
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok(host),
    }
}

impl Drop for MappedArea {
    fn drop(&mut self) {
        // SAFETY: `host`/`size` are exactly what mmap returned and nobody else unmaps them.
        unsafe {
            libc::munmap(self.host, self.size as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::device_fd::RegionInfo;

    #[test]
    fn huge_alignment_is_the_largest_huge_size_that_fits() {
        let a = |offset, size| huge_alignment(MmapArea { offset, size });
        assert_eq!(a(0, 16 << 30), 1 << 30);
        assert_eq!(a(0x4000, (1 << 30) + (8 << 20)), 1 << 30);
        assert_eq!(a(0, 4 << 20), 2 << 20);
        assert_eq!(a(0x1000, 0x1f_f000), PAGE_SIZE, "under 2 MiB: pages only");
    }

    /// A shared file mapping placed like a BAR area: its address agrees with the area's
    /// offset modulo the alignment, and it shows the file at the requested offset.
    #[test]
    fn aligned_mappings_keep_the_phase_and_the_file_offset() {
        // SAFETY: memfd_create with a valid name; the fd is checked and closed below.
        let fd = unsafe { libc::memfd_create(c"bar".as_ptr(), 0) };
        assert!(fd >= 0);
        let size = 8usize << 20;
        // SAFETY: `fd` is the memfd just created.
        assert_eq!(unsafe { libc::ftruncate(fd, size as libc::off_t) }, 0);
        let marker = 0x5au8;
        // SAFETY: writes one byte from a live local into the memfd.
        let n = unsafe { libc::pwrite(fd, (&marker as *const u8).cast(), 1, 0x20_3000) };
        assert_eq!(n, 1);
        for (file_off, phase) in [(0x20_0000usize, 0usize), (0x20_3000, 0x3000)] {
            let len = 4 << 20;
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let host = map_aligned(
                fd,
                file_off as libc::off_t,
                len,
                prot,
                2 << 20,
                phase as u64,
            )
            .unwrap();
            assert_eq!(host as usize % (2 << 20), phase, "phase kept");
            let at = 0x20_3000 - file_off;
            // SAFETY: `host..host+len` is the mapping just made; `at < len`.
            let seen = unsafe { *(host as *const u8).add(at) };
            assert_eq!(seen, marker, "the file at offset {file_off:#x}");
            // SAFETY: exactly the mapping made above.
            assert_eq!(unsafe { libc::munmap(host, len) }, 0);
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
    }

    const MMAP: u32 = 0x7; // READ | WRITE | MMAP

    fn region(size: u64) -> RegionInfo {
        RegionInfo {
            flags: MMAP,
            size,
            offset: 0,
            ..Default::default()
        }
    }

    fn pairs(a: &[MmapArea]) -> Vec<(u64, u64)> {
        a.iter().map(|a| (a.offset, a.size)).collect()
    }

    #[test]
    fn whole_bar_without_msix() {
        assert_eq!(pairs(&mmap_areas(&region(0x4000), &[])), vec![(0, 0x4000)]);
        let mut r = region(0x4000);
        r.flags = 0x3;
        assert!(mmap_areas(&r, &[]).is_empty(), "no MMAP flag: trap all");
    }

    #[test]
    fn msix_table_and_pba_pages_are_carved_even_when_msix_mappable() {
        let mut r = region(0x10000);
        r.msix_mappable = true;
        // Table at 0x2000 (2 KiB), PBA at 0x3800 in the same page run.
        let a = mmap_areas(&r, &[(0x2000, 0x800), (0x3800, 8)]);
        assert_eq!(pairs(&a), vec![(0, 0x2000), (0x4000, 0xc000)]);
        // An unaligned table takes its whole page with it.
        let a = mmap_areas(&r, &[(0x2100, 0x10)]);
        assert_eq!(pairs(&a), vec![(0, 0x2000), (0x3000, 0xd000)]);
        // A table at the very start and a PBA at the very end.
        let a = mmap_areas(&r, &[(0, 0x100), (0xff00, 0x100)]);
        assert_eq!(pairs(&a), vec![(0x1000, 0xe000)]);
    }

    #[test]
    fn sparse_areas_are_honoured_and_shrunk_to_pages() {
        let mut r = region(0x8000);
        r.sparse_areas = Some(vec![
            MmapArea {
                offset: 0x100,
                size: 0x2f00,
            }, // -> 0x1000..0x3000
            MmapArea {
                offset: 0x5000,
                size: 0x100000,
            }, // clipped to the region
            MmapArea {
                offset: 0x3800,
                size: 0x400,
            }, // less than a page: dropped
        ]);
        let a = mmap_areas(&r, &[(0x6000, 0x10)]);
        assert_eq!(
            pairs(&a),
            vec![(0x1000, 0x2000), (0x5000, 0x1000), (0x7000, 0x1000)]
        );
    }

    #[test]
    fn sub_page_bar_maps_one_page_unless_something_traps() {
        assert_eq!(
            pairs(&mmap_areas(&region(0x100), &[])),
            vec![(0, PAGE_SIZE)]
        );
        assert!(mmap_areas(&region(0x100), &[(0x80, 0x10)]).is_empty());
        let mut r = region(0x100);
        r.sparse_areas = Some(vec![]);
        assert!(mmap_areas(&r, &[]).is_empty(), "kernel listed nothing");
    }

    #[test]
    fn hostile_sizes_do_not_overflow() {
        let mut r = region(!0xfff);
        r.sparse_areas = Some(vec![MmapArea {
            offset: u64::MAX - 10,
            size: 100,
        }]);
        assert!(mmap_areas(&r, &[(u64::MAX - 1, 10)]).is_empty());
    }

    #[test]
    fn maps_and_unmaps_a_real_fd() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(0x3000).unwrap();
        use std::os::unix::io::AsRawFd;
        let m = MappedArea::map(
            f.as_raw_fd(),
            0x1000,
            MmapArea {
                offset: 0x1000,
                size: 0x1000,
            },
            true,
        )
        .unwrap();
        assert_ne!(m.host_addr(), 0);
        assert!(MappedArea::map(
            -1,
            0,
            MmapArea {
                offset: 0,
                size: 0x1000
            },
            true
        )
        .is_err());
        assert!(MappedArea::map(
            f.as_raw_fd(),
            u64::MAX,
            MmapArea {
                offset: 1,
                size: 0x1000
            },
            true
        )
        .is_err());
    }
}
