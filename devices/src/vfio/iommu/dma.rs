//! The identity map of guest RAM into the VM's IOMMU space (IOVA = guest physical
//! address).
//!
//! Map after the first device is attached: a type1 container has no IOMMU type before
//! that, and the reserved regions (the MSI window) are only known then. Before pinning,
//! each RAM range is checked against the IOVA ranges the kernel reports and against
//! RLIMIT_MEMLOCK, so a VM that cannot work fails with the reason instead of a bare errno.

use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::iova::{self, IovaRange};
use super::{IommuError, IommuSpace};
use crate::vfio::memlock::HostLimits;

/// What a successful mapping did, for the log and the benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaReport {
    /// Regions mapped.
    pub regions: usize,
    /// Bytes mapped.
    pub bytes: u64,
    /// Wall time of the map calls (pinning included).
    pub elapsed: Duration,
}

/// Fails on the first RAM range the IOMMU cannot map; no ranges known = no check.
pub fn check_iova(ranges: &[IovaRange], ram: &[(u64, u64)]) -> Result<(), IommuError> {
    if ranges.is_empty() {
        return Ok(());
    }
    match iova::first_outside(ranges, ram) {
        Some((start, len)) => Err(IommuError::OutsideIovaRanges {
            start,
            last: start.saturating_add(len.saturating_sub(1)),
            allowed: iova::describe(ranges),
        }),
        None => Ok(()),
    }
}

fn map_hint(e: &vfio_ioctls::VfioError) -> &'static str {
    let s = e.to_string();
    if s.contains("EEXIST") || s.contains("File exists") {
        "; the range is already mapped (two VMs sharing a container, or RAM mapped twice)"
    } else if s.contains("ENOMEM") || s.contains("Cannot allocate") {
        "; pinning failed: raise RLIMIT_MEMLOCK, or use hugepages"
    } else if s.contains("ENOSPC") || s.contains("No space") {
        "; the IOMMU ran out of DMA entries (vfio_iommu_type1.dma_entry_limit): use hugepages"
    } else {
        ""
    }
}
/// Guest RAM checked for mapping: each region as (guest address, length, host address).
/// Host addresses are plain numbers so a helper thread can take the list; whoever maps
/// it keeps the memory they point into alive (see [`IommuSpace::map_ram`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamMap {
    regions: Vec<(u64, usize, usize)>,
    bytes: u64,
}

/// The unit in which [`RamMap::prefault`] splits RAM between its threads: a whole number
/// of huge pages, so no transparent huge page is faulted by two threads.
const PREFAULT_CHUNK: usize = 64 << 20;

impl RamMap {
    /// Bytes to map.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Faults every page of the RAM in (`MADV_POPULATE_WRITE`) with up to `threads`
    /// threads, so the pinning that follows finds the pages present: page allocation and
    /// zeroing, most of a pin's cost, then runs on every core instead of in the one
    /// thread of the map call. The contents do not change (populating a page that is
    /// present is a no-op; the guest may be running). Returns how long it took, or
    /// `None` when the kernel cannot populate (before Linux 5.14), which leaves the
    /// faulting to the pin.
    pub fn prefault(&self, threads: usize) -> Option<Duration> {
        let start = Instant::now();
        let chunks: Vec<(usize, usize)> = self
            .regions
            .iter()
            .flat_map(|&(_, len, host)| {
                (0..len)
                    .step_by(PREFAULT_CHUNK)
                    .map(move |off| (host + off, (len - off).min(PREFAULT_CHUNK)))
            })
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let unsupported = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..threads.clamp(1, 16) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(addr, len)) = chunks.get(i) else {
                        break;
                    };
                    if unsupported.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // SAFETY: `addr..addr+len` lies in guest RAM that the caller keeps
                    // mapped (the RamMap came from live guest memory and map_ram's
                    // contract holds it); MADV_POPULATE_WRITE only faults pages in and
                    // never changes their contents.
                    let rc = unsafe {
                        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE)
                    };
                    if rc != 0 {
                        let e = std::io::Error::last_os_error();
                        if e.raw_os_error() == Some(libc::EINVAL) {
                            if !unsupported.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                log::info!(
                                    "VFIO: guest RAM cannot be prefaulted ({e}; \
                                     MADV_POPULATE_WRITE needs Linux 5.14): the pin faults it"
                                );
                            }
                        } else {
                            // The pin will fault the rest and report a real shortage.
                            log::debug!("prefaulting guest RAM at {addr:#x}+{len:#x}: {e}");
                        }
                    }
                });
            }
        });
        (!unsupported.into_inner()).then(|| start.elapsed())
    }
}

/// The host's cores (1 when unknown): the prefault's threads when nothing else runs.
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pinning is done in chunks of at most this much, so a cancelled mapping (the VM stopped
/// while it ran) ends within one chunk's time; 1 GiB keeps huge IOMMU pages possible.
const MAP_CHUNK: usize = 1 << 30;

impl IommuSpace {
    /// Identity-maps every region of `mem` (IOVA = GPA), after the checks of
    /// [`IommuSpace::check_guest_memory`]. Call once, after the first device is attached.
    pub fn map_guest_memory<M: GuestMemoryBackend>(
        &self,
        mem: &M,
    ) -> Result<DmaReport, IommuError> {
        let ram = self.check_guest_memory(mem)?;
        // SAFETY: `mem` is borrowed for the whole call, so its regions stay mapped.
        unsafe { self.map_ram(&ram, None, all_cores()) }
    }

    /// The checks before pinning: every RAM range inside the IOVA ranges the kernel
    /// reports, and the total within RLIMIT_MEMLOCK. Cheap: the VMM runs them before the
    /// guest starts even when the mapping itself runs beside the guest's boot.
    pub fn check_guest_memory<M: GuestMemoryBackend>(&self, mem: &M) -> Result<RamMap, IommuError> {
        let mut regions = Vec::new();
        for r in mem.iter() {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| IommuError::NoHostAddress(r.start_addr().0))?;
            let len = usize::try_from(r.len())
                .map_err(|_| IommuError::NoHostAddress(r.start_addr().0))?;
            regions.push((r.start_addr().0, len, host as usize));
        }
        let spans: Vec<(u64, u64)> = regions.iter().map(|&(g, l, _)| (g, l as u64)).collect();
        match self.iova_ranges() {
            Ok(ranges) => check_iova(&ranges, &spans)?,
            Err(e) => {
                log::warn!("VFIO: cannot read the IOMMU's IOVA ranges ({e}); mapping unchecked")
            }
        }
        let bytes: u64 = spans.iter().map(|s| s.1).sum();
        HostLimits::current().check(bytes)?;
        Ok(RamMap { regions, bytes })
    }

    /// Faults `ram` in on `threads` threads ([`RamMap::prefault`]), then pins and maps it
    /// chunk by chunk, stopping with [`IommuError::Cancelled`] between chunks once `gate`
    /// is cancelled. The report's time covers both.
    ///
    /// # Safety
    /// Every host range in `ram` must stay mapped in this process, as the guest RAM it
    /// was checked from, for as long as the IOMMU space exists (the caller keeps the
    /// guest memory object alive: the VM does, and a helper thread holds a clone).
    pub unsafe fn map_ram(
        &self,
        ram: &RamMap,
        gate: Option<&super::dma_gate::DmaGate>,
        threads: usize,
    ) -> Result<DmaReport, IommuError> {
        let ops = self.ops();
        let start = Instant::now();
        if let Some(t) = ram.prefault(threads) {
            log::info!(
                "VFIO: prefaulted {} MiB of guest RAM on {threads} thread(s) in {:.1} ms",
                ram.bytes >> 20,
                t.as_secs_f64() * 1000.0
            );
        }
        for &(gpa, len, host) in &ram.regions {
            let mut done = 0usize;
            while done < len {
                if gate.is_some_and(|g| g.is_cancelled()) {
                    return Err(IommuError::Cancelled);
                }
                let n = (len - done).min(MAP_CHUNK);
                let at = gpa + done as u64;
                // SAFETY: `host + done .. + n` lies inside guest RAM that the caller keeps
                // mapped for the life of the mapping (this function's contract); while
                // mapped it is only accessed by the guest, the device, and the VMM's
                // volatile guest-memory accessors, never through Rust references.
                unsafe { ops.vfio_dma_map(at, n, (host + done) as *mut u8) }.map_err(|source| {
                    IommuError::Map {
                        gpa: at,
                        size: n as u64,
                        hint: map_hint(&source),
                        source,
                    }
                })?;
                done += n;
            }
        }
        let report = DmaReport {
            regions: ram.regions.len(),
            bytes: ram.bytes,
            elapsed: start.elapsed(),
        };
        log::info!(
            "VFIO ({}): DMA-mapped {} MiB of guest RAM in {} region(s) in {:.1} ms",
            self.name(),
            ram.bytes >> 20,
            report.regions,
            report.elapsed.as_secs_f64() * 1000.0
        );
        Ok(report)
    }

    /// Undoes [`IommuSpace::map_guest_memory`] (for the map-time benchmark and RAM
    /// hot-unplug; a VM's teardown does not need it). Returns the time it took.
    pub fn unmap_guest_memory<M: GuestMemoryBackend>(
        &self,
        mem: &M,
    ) -> Result<Duration, IommuError> {
        let ops = self.ops();
        let start = Instant::now();
        for r in mem.iter() {
            let (gpa, size) = (r.start_addr().0, r.len());
            let len = usize::try_from(size).map_err(|_| IommuError::NoHostAddress(gpa))?;
            ops.vfio_dma_unmap(gpa, len)
                .map_err(|source| IommuError::Unmap { gpa, size, source })?;
        }
        Ok(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Pages of `host..host+len` that are resident (mincore).
    fn resident(host: usize, len: usize) -> usize {
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `host..host+len` is a live mapping of the test's guest memory and `vec`
        // has one byte per page of it.
        let rc = unsafe { libc::mincore(host as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 != 0).count()
    }

    #[test]
    fn prefault_makes_every_page_resident_and_keeps_the_contents() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 3 << 20),
            (GuestAddress(1 << 32), 130 << 20),
        ])
        .unwrap();
        mem.write_obj(0x5au8, GuestAddress(0x1234)).unwrap();
        mem.write_obj(0xa5u8, GuestAddress((1 << 32) + (129 << 20)))
            .unwrap();
        let regions: Vec<(u64, usize, usize)> = mem
            .iter()
            .map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
                (r.start_addr().0, r.len() as usize, host)
            })
            .collect();
        let before: usize = regions.iter().map(|&(_, l, h)| resident(h, l)).sum();
        let ram = RamMap {
            bytes: regions.iter().map(|r| r.1 as u64).sum(),
            regions: regions.clone(),
        };
        assert!(
            ram.prefault(3).is_some(),
            "MADV_POPULATE_WRITE refused: this test needs Linux 5.14 or later"
        );
        let after: usize = regions.iter().map(|&(_, l, h)| resident(h, l)).sum();
        assert_eq!(
            after,
            (133 << 20) / 4096,
            "every page resident (was {before})"
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1234)).unwrap(), 0x5a);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress((1 << 32) + (129 << 20)))
                .unwrap(),
            0xa5
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0);
    }

    #[test]
    fn iova_check_names_the_range_and_the_limits() {
        let r = [
            IovaRange {
                start: 0,
                last: 0xfedf_ffff,
            },
            IovaRange {
                start: 0xfef0_0000,
                last: (1 << 39) - 1,
            },
        ];
        assert!(check_iova(&r, &[(0, 0xc000_0000), (1 << 32, 1 << 32)]).is_ok());
        let e = check_iova(&r, &[(0, 1 << 30), (1 << 38, 1 << 39)]).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("0x4000000000-0xbfffffffff") && m.contains("0xfef00000-0x7fffffffff"),
            "{m}"
        );
        assert!(
            check_iova(&[], &[(1 << 50, 1)]).is_ok(),
            "unknown ranges: no check"
        );
    }
}
