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
impl IommuSpace {
    /// Identity-maps every region of `mem` (IOVA = GPA), after the checks above.
    /// Call once, after the first device is attached.
    pub fn map_guest_memory<M: GuestMemoryBackend>(
        &self,
        mem: &M,
    ) -> Result<DmaReport, IommuError> {
        let mut ram = Vec::new();
        for r in mem.iter() {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| IommuError::NoHostAddress(r.start_addr().0))?;
            ram.push((r.start_addr().0, r.len(), host));
        }
        let spans: Vec<(u64, u64)> = ram.iter().map(|&(g, l, _)| (g, l)).collect();
        match self.iova_ranges() {
            Ok(ranges) => check_iova(&ranges, &spans)?,
            Err(e) => {
                log::warn!("VFIO: cannot read the IOMMU's IOVA ranges ({e}); mapping unchecked")
            }
        }
        let bytes: u64 = spans.iter().map(|s| s.1).sum();
        HostLimits::current().check(bytes)?;
        let ops = self.ops();
        let start = Instant::now();
        for &(gpa, size, host) in &ram {
            let len = usize::try_from(size).map_err(|_| IommuError::NoHostAddress(gpa))?;
            // SAFETY: `host..host+len` is guest RAM owned by `mem`, which the VMM keeps alive
            // for the VM's lifetime (longer than the mapping, which dies with the container or
            // IOAS). While mapped it is only accessed by the guest, the device, and the VMM's
            // volatile guest-memory accessors, never through Rust references.
            unsafe { ops.vfio_dma_map(gpa, len, host) }.map_err(|source| IommuError::Map {
                gpa,
                size,
                hint: map_hint(&source),
                source,
            })?;
        }
        let report = DmaReport {
            regions: ram.len(),
            bytes,
            elapsed: start.elapsed(),
        };
        log::info!(
            "VFIO ({}): DMA-mapped {} MiB of guest RAM in {} region(s) in {:.1} ms",
            self.name(),
            bytes >> 20,
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
