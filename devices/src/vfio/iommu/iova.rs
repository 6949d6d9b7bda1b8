//! The IOVA ranges the host IOMMU can map, from either backend.
//!
//! Neither vfio-ioctls nor iommufd-ioctls wraps these queries, so they are issued here:
//! `VFIO_IOMMU_GET_INFO` on a type1 container (the ranges sit in a capability chain after
//! the fixed struct) and `IOMMU_IOAS_IOVA_RANGES` on an iommufd IOAS. Both exclude the
//! MSI window (0xfee00000-0xfeefffff on x86) and anything above the IOMMU's address width.

use std::os::unix::io::AsRawFd;

use iommufd_bindings::iommufd::{iommu_ioas_iova_ranges, iommu_iova_range};
use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_info, VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
};

use crate::vfio::sys::{IOMMU_IOAS_IOVA_RANGES, VFIO_IOMMU_GET_INFO};

/// An inclusive IOVA range `[start, last]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaRange {
    /// First usable IOVA.
    pub start: u64,
    /// Last usable IOVA (inclusive).
    pub last: u64,
}

impl IovaRange {
    /// True if `[addr, addr + len)` lies entirely inside this range.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        len > 0
            && addr >= self.start
            && addr
                .checked_add(len - 1)
                .is_some_and(|last| last <= self.last)
    }
}

/// Formats ranges for error messages.
pub fn describe(ranges: &[IovaRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{:#x}-{:#x}", r.start, r.last))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first `[addr, addr + len)` of `regions` that no range holds entirely.
pub fn first_outside(ranges: &[IovaRange], regions: &[(u64, u64)]) -> Option<(u64, u64)> {
    regions
        .iter()
        .copied()
        .find(|&(addr, len)| !ranges.iter().any(|r| r.contains(addr, len)))
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The end (last + 1) of the range that holds 4 GiB, where RAM above the 32-bit hole
/// starts; 4 GiB when no range holds it; `None` when the kernel listed no ranges.
pub fn end_above_4g(ranges: &[IovaRange]) -> Option<u64> {
    const FOUR_GIB: u64 = 1 << 32;
    if ranges.is_empty() {
        return None;
    }
    Some(
        ranges
            .iter()
            .find(|r| r.start <= FOUR_GIB && FOUR_GIB <= r.last)
            .map_or(FOUR_GIB, |r| r.last.saturating_add(1)),
    )
}

/// Parses the IOVA-range capability out of a `vfio_iommu_type1_info` buffer. Offsets
/// come from the kernel but are still bounds- and loop-checked.
pub fn parse_type1_info(buf: &[u8]) -> Vec<IovaRange> {
    let mut ranges = Vec::new();
    let Some(flags) = rd_u32(buf, 4) else {
        return ranges;
    };
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return ranges;
    }
    let mut next = rd_u32(buf, 16).unwrap_or(0) as usize;
    let min = std::mem::size_of::<vfio_iommu_type1_info>();
    for _ in 0..16 {
        if next < min || next % 4 != 0 {
            break;
        }
        let (Some(id_ver), Some(after)) = (rd_u32(buf, next), rd_u32(buf, next + 4)) else {
            break;
        };
        if id_ver & 0xffff == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = rd_u32(buf, next + 8).unwrap_or(0) as usize;
            for i in 0..n.min(1024) {
                let at = next + 16 + i * 16;
                match (rd_u64(buf, at), rd_u64(buf, at + 8)) {
                    (Some(start), Some(last)) if start <= last => {
                        ranges.push(IovaRange { start, last })
                    }
                    (Some(_), Some(_)) => {}
                    _ => break,
                }
            }
            break;
        }
        if after as usize <= next {
            break;
        }
        next = after as usize;
    }
    ranges
}

/// `VFIO_IOMMU_GET_INFO` on a type1 container with its IOMMU set.
pub fn type1_iova_ranges(container: &impl AsRawFd) -> std::io::Result<Vec<IovaRange>> {
    let mut argsz = std::mem::size_of::<vfio_iommu_type1_info>();
    // The kernel says how big the buffer must be; it may grow once between calls.
    for _ in 0..3 {
        let mut buf = vec![0u64; argsz.div_ceil(8)];
        let bytes = buf.len() * 8;
        // Write argsz (first u32) in place.
        buf[0] = bytes as u64 & 0xffff_ffff;
        // SAFETY: `buf` is `bytes` long, 8-byte aligned (as vfio_iommu_type1_info needs),
        // and starts with argsz = bytes, so the kernel writes at most that many bytes.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                container,
                VFIO_IOMMU_GET_INFO(),
                buf.as_mut_ptr(),
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw: Vec<u8> = buf.iter().flat_map(|w| w.to_le_bytes()).collect();
        let want = rd_u32(&raw, 0).unwrap_or(0) as usize;
        if want > bytes && want <= 1 << 20 {
            argsz = want;
            continue;
        }
        return Ok(parse_type1_info(&raw));
    }
    Ok(Vec::new())
}

/// `IOMMU_IOAS_IOVA_RANGES` for `ioas_id` on an iommufd.
pub fn ioas_iova_ranges(iommufd: &impl AsRawFd, ioas_id: u32) -> std::io::Result<Vec<IovaRange>> {
    let mut out: Vec<iommu_iova_range> = Vec::new();
    for _ in 0..3 {
        let mut q = iommu_ioas_iova_ranges {
            size: std::mem::size_of::<iommu_ioas_iova_ranges>() as u32,
            ioas_id,
            num_iovas: out.len() as u32,
            __reserved: 0,
            allowed_iovas: out.as_mut_ptr() as u64,
            out_iova_alignment: 0,
        };
        // SAFETY: `q` is a valid struct of the size it declares; `allowed_iovas` points at
        // `num_iovas` writable entries (or is dangling with num_iovas = 0, never written).
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(iommufd, IOMMU_IOAS_IOVA_RANGES(), &mut q)
        };
        let err = std::io::Error::last_os_error();
        if ret == 0 {
            out.truncate(q.num_iovas as usize);
            return Ok(out
                .iter()
                .map(|r| IovaRange {
                    start: r.start,
                    last: r.last,
                })
                .collect());
        }
        if err.raw_os_error() == Some(libc::EMSGSIZE) && (q.num_iovas as usize) <= 4096 {
            out = vec![iommu_iova_range { start: 0, last: 0 }; q.num_iovas as usize];
            continue;
        }
        return Err(err);
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_with_ranges(ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[4..8].copy_from_slice(&VFIO_IOMMU_INFO_CAPS.to_le_bytes());
        b[16..20].copy_from_slice(&32u32.to_le_bytes()); // cap_offset
        b.resize(32, 0);
        // An unrelated cap first (DMA_AVAIL, id 3) pointing at the IOVA cap.
        b.extend_from_slice(&(3u32 | (1 << 16)).to_le_bytes());
        b.extend_from_slice(&48u32.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE | (1 << 16)).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (s, e) in ranges {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_the_type1_capability_chain() {
        let buf = info_with_ranges(&[(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]);
        assert_eq!(
            parse_type1_info(&buf),
            vec![
                IovaRange {
                    start: 0,
                    last: 0xfedf_ffff
                },
                IovaRange {
                    start: 0xfef0_0000,
                    last: 0x7f_ffff_ffff
                }
            ]
        );
    }

    #[test]
    fn hostile_or_truncated_buffers_yield_nothing() {
        let mut buf = info_with_ranges(&[(0, 0xffff)]);
        buf.truncate(buf.len() - 4);
        assert!(parse_type1_info(&buf).is_empty(), "range cut short");
        let mut looped = info_with_ranges(&[]);
        looped[36..40].copy_from_slice(&32u32.to_le_bytes()); // cap points at itself
        assert!(parse_type1_info(&looped).is_empty());
        let mut noflag = info_with_ranges(&[(0, 1)]);
        noflag[4] = 0;
        assert!(parse_type1_info(&noflag).is_empty());
        assert!(parse_type1_info(&[1, 2, 3]).is_empty());
        let mut huge = info_with_ranges(&[(0, 1)]);
        huge[56..60].copy_from_slice(&u32::MAX.to_le_bytes()); // nr_iovas lies
        assert_eq!(parse_type1_info(&huge).len(), 1);
    }

    #[test]
    fn ram_is_checked_against_the_ranges() {
        // The bed's virtio-iommu: 39 bits with the MSI window carved out.
        let r = [
            IovaRange {
                start: 0,
                last: 0xfedf_ffff,
            },
            IovaRange {
                start: 0xfef0_0000,
                last: 0x7f_ffff_ffff,
            },
        ];
        assert_eq!(
            first_outside(&r, &[(0, 0xc000_0000), (1 << 32, 1 << 30)]),
            None
        );
        assert_eq!(
            first_outside(&r, &[(0xfe00_0000, 0x100_0000)]),
            Some((0xfe00_0000, 0x100_0000)),
            "covers the MSI window"
        );
        assert_eq!(
            first_outside(&r, &[(1 << 39, 4096)]),
            Some((1 << 39, 4096)),
            "above 39 bits"
        );
        assert!(!r[0].contains(0, 0), "empty ranges are never inside");
        assert!(!r[1].contains(u64::MAX, 2));
        assert_eq!(describe(&r[..1]), "0x0-0xfedfffff");
    }

    #[test]
    fn queries_fail_cleanly_on_a_non_iommu_fd() {
        let f = tempfile::tempfile().unwrap();
        assert!(type1_iova_ranges(&f).is_err());
        assert!(ioas_iova_ranges(&f, 1).is_err());
    }

    #[test]
    fn the_range_above_4_gib_bounds_the_guest_map() {
        let r = |start, last| IovaRange { start, last };
        // virtio-iommu in the bed: everything but the MSI window, up to 2^39.
        let bed = [r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 39) - 1)];
        assert_eq!(end_above_4g(&bed), Some(1 << 39));
        // A 48-bit IOMMU, one range.
        assert_eq!(end_above_4g(&[r(0, (1 << 48) - 1)]), Some(1 << 48));
        // Nothing above 4 GiB: the map stays below it.
        assert_eq!(end_above_4g(&[r(0, 0xfedf_ffff)]), Some(1 << 32));
        assert_eq!(end_above_4g(&[]), None, "the kernel did not say");
        assert_eq!(
            end_above_4g(&[r(0, u64::MAX)]),
            Some(u64::MAX),
            "no overflow"
        );
    }
}
