//! The VM's one IOMMU address space (a type1 container or an iommufd IOAS) and the
//! identity mapping of guest RAM into it (IOVA = guest physical address).
//!
//! One per VM, shared by every device, so RAM is pinned and accounted once. Map after the
//! first device is attached: a type1 container has no IOMMU type before that, and the
//! reserved regions (the MSI window) are only known then. Before pinning, each RAM range
//! is checked against the IOVA ranges the kernel reports and against RLIMIT_MEMLOCK, so
//! a VM that cannot work fails with the reason instead of a bare errno.
//!
//! Teardown: mappings go with the container (last group detached) or the IOAS (destroyed
//! when the last reference drops); there is no explicit unmap at exit.

use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_ioctls::{VfioContainer, VfioIommufd, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::backend::VfioDeviceOps;
use super::discovery::{check_device_flags, UnsupportedDeviceType};
use super::handle::OwnedVfioDevice;
use super::iova::{self, IovaRange};

/// Where to open a device from (the discovery step fills this in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSource {
    /// The device's sysfs directory (PCI function or mdev).
    pub sysfs: PathBuf,
    /// Its `/dev/vfio/devices/vfioN`, when known.
    pub cdev: Option<PathBuf>,
    /// A cdev fd opened by a launcher (`--device fd=N`); dup'ed, never closed by us.
    pub cdev_fd: Option<RawFd>,
}

/// Which kind of IOMMU address space the VM uses.
#[derive(Clone)]
pub enum IommuSpace {
    /// Legacy type1 container with groups.
    Group(Arc<VfioContainer>),
    /// iommufd IOAS with device cdevs.
    Iommufd(Arc<VfioIommufd>),
}

/// Opening the backend, a device, or mapping RAM failed.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// A backend or device could not be opened.
    #[error("{what}: {}{hint}", chain(source))]
    Open {
        /// What was being opened.
        what: String,
        /// vfio-ioctls' error.
        #[source]
        source: vfio_ioctls::VfioError,
        /// How to fix it (starts with "; ").
        hint: &'static str,
    },
    /// A RAM range lies outside what the IOMMU can map.
    #[error(
        "guest RAM {start:#x}-{last:#x} is outside the IOVA ranges the host IOMMU can map \
         ({allowed}); give the VM less memory so its RAM stays inside them"
    )]
    OutsideIovaRanges {
        /// First byte of the offending range.
        start: u64,
        /// Last byte.
        last: u64,
        /// The allowed ranges.
        allowed: String,
    },
    /// Pinning guest RAM would exceed RLIMIT_MEMLOCK.
    #[error(
        "VFIO must pin all {need} MiB of guest RAM but RLIMIT_MEMLOCK allows {limit} MiB; \
         raise it (e.g. `ulimit -l unlimited`, or `prlimit --memlock=unlimited --pid $$`) \
         or run passvm with CAP_IPC_LOCK"
    )]
    Memlock {
        /// MiB needed.
        need: u64,
        /// MiB allowed.
        limit: u64,
    },
    /// The kernel refused a mapping.
    #[error("DMA-mapping guest RAM {gpa:#x}+{size:#x} failed: {source}{hint}")]
    Map {
        /// Guest physical address (= IOVA).
        gpa: u64,
        /// Length.
        size: u64,
        /// vfio-ioctls' error.
        #[source]
        source: vfio_ioctls::VfioError,
        /// How to fix it.
        hint: &'static str,
    },
    /// The kernel refused an unmap.
    #[error("DMA-unmapping guest RAM {gpa:#x}+{size:#x} failed: {source}")]
    Unmap {
        /// Guest physical address (= IOVA).
        gpa: u64,
        /// Length.
        size: u64,
        /// vfio-ioctls' error.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// A guest memory region has no host mapping.
    #[error("guest RAM region at {0:#x} has no host mapping to DMA-map")]
    NoHostAddress(u64),
    /// The opened device is not a PCI device.
    #[error(transparent)]
    UnsupportedType(#[from] UnsupportedDeviceType),
}

/// An error and its causes, "a: b: c" (vfio-ioctls keeps the errno in the causes).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

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

/// `CAP_IPC_LOCK` in the capability bit sets (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// The process's memlock budget: `None` when unlimited or privileged (CAP_IPC_LOCK).
pub fn memlock_budget() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ipc_lock = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
    if ipc_lock {
        return None;
    }
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    (rc == 0 && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

/// Fails when `bytes` of pinned memory exceed `budget` (`None` = unlimited).
pub fn check_memlock(bytes: u64, budget: Option<u64>) -> Result<(), DmaError> {
    match budget {
        Some(limit) if bytes > limit => Err(DmaError::Memlock {
            need: bytes.div_ceil(1 << 20),
            limit: limit >> 20,
        }),
        _ => Ok(()),
    }
}

/// Fails on the first RAM range the IOMMU cannot map; no ranges known = no check.
pub fn check_iova(ranges: &[IovaRange], ram: &[(u64, u64)]) -> Result<(), DmaError> {
    if ranges.is_empty() {
        return Ok(());
    }
    match iova::first_outside(ranges, ram) {
        Some((start, len)) => Err(DmaError::OutsideIovaRanges {
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
    /// "group" or "iommufd".
    pub fn name(&self) -> &'static str {
        match self {
            IommuSpace::Group(_) => "group",
            IommuSpace::Iommufd(_) => "iommufd",
        }
    }

    /// The `VfioOps` devices are opened against.
    pub fn ops(&self) -> Arc<dyn VfioOps> {
        match self {
            IommuSpace::Group(c) => c.clone(),
            IommuSpace::Iommufd(i) => i.clone(),
        }
    }

    /// The IOVA ranges the kernel reports (needs at least one device attached).
    pub fn iova_ranges(&self) -> std::io::Result<Vec<IovaRange>> {
        match self {
            IommuSpace::Group(c) => iova::type1_iova_ranges(c.as_ref()),
            IommuSpace::Iommufd(i) => iova::ioas_iova_ranges(i.iommufd().as_ref(), i.ioas().id()),
        }
    }

    /// Opens a device in this space: groups need its sysfs path; iommufd takes a
    /// pre-opened cdev fd, else the cdev path, else the sysfs path.
    ///
    /// A device whose `VFIO_DEVICE_GET_INFO` flags do not say PCI (platform, ccw, ...) is
    /// refused here, after opening, as the uAPI intends: only the kernel knows the type.
    pub fn open_device(&self, src: &DeviceSource) -> Result<OwnedVfioDevice, DmaError> {
        let dev = match self {
            IommuSpace::Group(c) => super::group::open_device(c, &src.sysfs)?,
            IommuSpace::Iommufd(i) => super::iommufd::open_device(i, src)?,
        };
        let name = src.sysfs.file_name().map_or_else(
            || src.sysfs.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        check_device_flags(&name, dev.device_flags())?;
        Ok(dev)
    }

    /// Identity-maps every region of `mem` (IOVA = GPA), after the checks above.
    /// Call once, after the first device is attached.
    pub fn map_guest_memory<M: GuestMemoryBackend>(&self, mem: &M) -> Result<DmaReport, DmaError> {
        let mut ram = Vec::new();
        for r in mem.iter() {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| DmaError::NoHostAddress(r.start_addr().0))?;
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
        check_memlock(bytes, memlock_budget())?;
        let ops = self.ops();
        let start = Instant::now();
        for &(gpa, size, host) in &ram {
            let len = usize::try_from(size).map_err(|_| DmaError::NoHostAddress(gpa))?;
            // SAFETY: `host..host+len` is guest RAM owned by `mem`, which the VMM keeps alive
            // for the VM's lifetime (longer than the mapping, which dies with the container or
            // IOAS). While mapped it is only accessed by the guest, the device, and the VMM's
            // volatile guest-memory accessors, never through Rust references.
            unsafe { ops.vfio_dma_map(gpa, len, host) }.map_err(|source| DmaError::Map {
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
    pub fn unmap_guest_memory<M: GuestMemoryBackend>(&self, mem: &M) -> Result<Duration, DmaError> {
        let ops = self.ops();
        let start = Instant::now();
        for r in mem.iter() {
            let (gpa, size) = (r.start_addr().0, r.len());
            let len = usize::try_from(size).map_err(|_| DmaError::NoHostAddress(gpa))?;
            ops.vfio_dma_unmap(gpa, len)
                .map_err(|source| DmaError::Unmap { gpa, size, source })?;
        }
        Ok(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_budget_is_enforced_with_a_fix_in_the_message() {
        assert!(check_memlock(1 << 30, None).is_ok());
        assert!(check_memlock(1 << 30, Some(1 << 30)).is_ok());
        let e = check_memlock((1 << 30) + 1, Some(64 << 20)).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("1025 MiB") && m.contains("64 MiB") && m.contains("ulimit -l"),
            "{m}"
        );
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

    #[test]
    fn memlock_budget_reads_the_process_state() {
        // Root with CAP_IPC_LOCK (this machine) or an unlimited limit: no budget; otherwise
        // the soft limit. Either way the call must not fail.
        let b = memlock_budget();
        if let Some(limit) = b {
            assert!(limit < u64::MAX);
        }
    }
}
