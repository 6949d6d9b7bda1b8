//! PCI Base Address Registers: kinds, encodings, size masks, and an allocator that places
//! BARs in the guest's MMIO and I/O windows.
//!
//! Every memory BAR is placed naturally aligned with at least page alignment, so each one
//! can be backed by its own KVM memory slots and nothing else shares its pages; I/O BARs
//! are naturally aligned with at least 4-byte alignment.

/// Config-space offset of BAR0.
pub const BAR0_OFFSET: usize = 0x10;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;
/// Config-space offset of the expansion ROM BAR in a type-0 header.
pub const ROM_BAR_OFFSET: usize = 0x30;
use crate::size::PAGE_SIZE;

const IO_SPACE: u32 = 0x1;
const MEM_64: u32 = 0x4;
const PREFETCH: u32 = 0x8;

/// What kind of BAR this is, from the low bits of its register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// 32-bit memory.
    Mem32 {
        /// Prefetchable bit (bit 3) as the device reports it.
        prefetchable: bool,
    },
    /// 64-bit memory: this BAR and the next form one address.
    Mem64 {
        /// Prefetchable bit (bit 3) as the device reports it.
        prefetchable: bool,
    },
}

impl BarKind {
    /// Decodes the low bits of a BAR register as the device reports them.
    pub fn from_register(raw: u32) -> Self {
        if raw & IO_SPACE != 0 {
            return BarKind::Io;
        }
        let prefetchable = raw & PREFETCH != 0;
        // Type 0b10 is 64-bit; the reserved 0b01 / 0b11 are treated as 32-bit.
        if (raw >> 1) & 0x3 == 0x2 {
            BarKind::Mem64 { prefetchable }
        } else {
            BarKind::Mem32 { prefetchable }
        }
    }

    /// The read-only low bits the guest must see in the BAR register.
    pub fn type_bits(self) -> u32 {
        match self {
            BarKind::Io => IO_SPACE,
            BarKind::Mem32 { prefetchable } => {
                if prefetchable {
                    PREFETCH
                } else {
                    0
                }
            }
            BarKind::Mem64 { prefetchable } => MEM_64 | if prefetchable { PREFETCH } else { 0 },
        }
    }

    /// Number of address bits below which the register holds type bits.
    fn flag_mask(self) -> u64 {
        match self {
            BarKind::Io => 0x3,
            _ => 0xf,
        }
    }

    /// True for I/O-port BARs.
    pub fn is_io(self) -> bool {
        self == BarKind::Io
    }

    /// True for 64-bit memory BARs.
    pub fn is_64bit(self) -> bool {
        matches!(self, BarKind::Mem64 { .. })
    }
}

/// A BAR's guest-visible register state: kind, size and current address.
///
/// Guest writes go through [`BarState::write_low`] / [`BarState::write_high`], which keep
/// the size mask and type bits exactly as hardware would, so the guest's sizing dance
/// (write all-ones, read back) returns the right size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarState {
    /// BAR kind.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Address as currently programmed by the guest (or the allocator).
    pub addr: u64,
}

impl BarState {
    /// A BAR of `kind` and `size` (rounded up to a power of two, at least 16 / 4 bytes).
    pub fn new(kind: BarKind, size: u64, addr: u64) -> Self {
        let min = kind.flag_mask() + 1;
        let size = size.max(min).checked_next_power_of_two().unwrap_or(1 << 63);
        let mut s = Self {
            kind,
            size,
            addr: 0,
        };
        s.addr = addr & s.addr_mask();
        s
    }

    /// The address bits a guest can write.
    pub fn addr_mask(&self) -> u64 {
        let mask = !(self.size - 1) & !self.kind.flag_mask();
        match self.kind {
            BarKind::Mem64 { .. } => mask,
            // I/O BARs decode 16 bits on x86 but the register is 32 bits wide.
            _ => mask & 0xffff_ffff,
        }
    }

    /// The low register as the guest reads it.
    pub fn read_low(&self) -> u32 {
        (self.addr as u32 & !(self.kind.flag_mask() as u32)) | self.kind.type_bits()
    }

    /// The high register (64-bit BARs only).
    pub fn read_high(&self) -> u32 {
        (self.addr >> 32) as u32
    }

    /// Guest write of the full low register.
    pub fn write_low(&mut self, value: u32) {
        let high = self.addr & !0xffff_ffff;
        self.addr = (high | value as u64) & self.addr_mask();
    }

    /// Guest write of the full high register of a 64-bit BAR.
    pub fn write_high(&mut self, value: u32) {
        let low = self.addr & 0xffff_ffff;
        self.addr = (((value as u64) << 32) | low) & self.addr_mask();
    }
}

/// A contiguous guest address window a class of BARs is placed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Window {
    fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// Where the VM's BARs may decode: the windows the root bridge forwards (the DSDT's
/// `_CRS`), which hold no RAM, no LAPIC, IOAPIC or MSI page and no ECAM. A guest that
/// programs a BAR elsewhere gets it unmapped (the device's problem, not the VM's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarWindows {
    /// The 32-bit MMIO window.
    pub mmio32: Option<Window>,
    /// The 64-bit MMIO window, cut at the 64-bit limit.
    pub mmio64: Option<Window>,
    /// The I/O-port window.
    pub io: Option<Window>,
}

impl BarWindows {
    /// Whether `[base, base + len)` lies inside one window of its kind (I/O or memory).
    pub fn contains(&self, io: bool, base: u64, len: u64) -> bool {
        let Some(end) = base.checked_add(len) else {
            return false;
        };
        let inside = |w: &Option<Window>| w.is_some_and(|w| base >= w.base && end <= w.end());
        if io {
            inside(&self.io)
        } else {
            inside(&self.mmio32) || inside(&self.mmio64)
        }
    }

    /// The windows of a kind, for a message ("0xc000-0xffff").
    pub fn describe(&self, io: bool) -> String {
        let span = |w: &Option<Window>| {
            w.filter(|w| w.size > 0)
                .map(|w| format!("{:#x}-{:#x}", w.base, w.end() - 1))
        };
        let list: Vec<String> = if io {
            vec![span(&self.io)]
        } else {
            vec![span(&self.mmio32), span(&self.mmio64)]
        }
        .into_iter()
        .flatten()
        .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    }
}

/// BAR placement failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarAllocError {
    /// No room left in any window that may hold this BAR.
    #[error(
        "no room for a {} {kind:?} BAR (size {size:#x}, naturally aligned) in the guest's {window} \
         window {}; pass fewer devices, or give the VM less RAM (the 64-bit window runs from \
         above RAM to the guest-physical limit: the host CPU's address width or the IOMMU's)",
        crate::size::human(*size),
        match window_span { Some((b, e)) => format!("{b:#x}-{e:#x}"), None => "(none)".into() }
    )]
    NoSpace {
        /// Kind of BAR.
        kind: BarKind,
        /// Size of the BAR.
        size: u64,
        /// Name of the window that was full.
        window: &'static str,
        /// The window's first and last usable byte, when it exists.
        window_span: Option<(u64, u64)>,
    },
}

/// Default limit for 64-bit BARs: the 39-bit IOVA space of the test bed's IOMMU (and of
/// many client CPUs' physical address width). BARs above it cannot be DMA-mapped there.
pub const DEFAULT_MMIO64_LIMIT: u64 = 1 << 39;

/// First-fit allocator over one window, with natural alignment.
#[derive(Debug, Clone)]
struct Region {
    window: Option<Window>,
    limit: u64,
    used: Vec<(u64, u64)>, // sorted (start, end)
}

impl Region {
    fn new(window: Option<Window>, limit: u64) -> Self {
        Self {
            window,
            limit,
            used: Vec::new(),
        }
    }

    /// The usable part of the window: first and last byte.
    fn span(&self) -> Option<(u64, u64)> {
        let w = self.window?;
        let end = w.end().min(self.limit);
        (end > w.base).then(|| (w.base, end - 1))
    }

    fn allocate(&mut self, size: u64, align: u64) -> Option<u64> {
        let w = self.window?;
        let end = w.end().min(self.limit);
        let mut candidate = align_up(w.base, align)?;
        let mut pos = 0;
        for (i, &(s, e)) in self.used.iter().enumerate() {
            if candidate.checked_add(size)? <= s {
                pos = i;
                break;
            }
            candidate = candidate.max(align_up(e, align)?);
            pos = i + 1;
        }
        if candidate.checked_add(size)? > end {
            return None;
        }
        self.used.insert(pos, (candidate, candidate + size));
        Some(candidate)
    }
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// Places BARs in the VM's windows: 32-bit MMIO (below 4 GiB), 64-bit MMIO, I/O ports.
///
/// The VMM creates one per VM from its memory layout and shares it between devices.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    mmio32: Region,
    mmio64: Region,
    io: Region,
}

impl BarAllocator {
    /// An allocator over the given windows; 64-bit BARs stay below `mmio64_limit`
    /// (use [`DEFAULT_MMIO64_LIMIT`] unless the host IOMMU is known to be wider).
    pub fn new(
        mmio32: Option<Window>,
        mmio64: Option<Window>,
        io: Option<Window>,
        mmio64_limit: u64,
    ) -> Self {
        Self {
            mmio32: Region::new(mmio32, 1 << 32),
            mmio64: Region::new(mmio64, mmio64_limit),
            io: Region::new(io, 1 << 16),
        }
    }

    /// The windows BARs may decode in (the 64-bit one cut at its limit).
    pub fn windows(&self) -> BarWindows {
        let cut = |r: &Region| {
            r.span().map(|(first, last)| Window {
                base: first,
                size: last - first + 1,
            })
        };
        BarWindows {
            mmio32: cut(&self.mmio32),
            mmio64: cut(&self.mmio64),
            io: cut(&self.io),
        }
    }

    /// Places a BAR of `kind` and `size`; returns its guest address.
    ///
    /// 64-bit BARs go to the 64-bit window and fall back to the 32-bit one when it is
    /// full or absent; 32-bit BARs only fit below 4 GiB.
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, BarAllocError> {
        let size = BarState::new(kind, size, 0).size;
        let fail = |window, region: &Region| BarAllocError::NoSpace {
            kind,
            size,
            window,
            window_span: region.span(),
        };
        match kind {
            BarKind::Io => {
                let e = fail("I/O port", &self.io);
                self.io.allocate(size, size.max(4)).ok_or(e)
            }
            BarKind::Mem32 { .. } => {
                let align = size.max(PAGE_SIZE);
                let e = fail("32-bit MMIO", &self.mmio32);
                self.mmio32.allocate(size, align).ok_or(e)
            }
            BarKind::Mem64 { .. } => {
                let align = size.max(PAGE_SIZE);
                let e = fail("64-bit MMIO", &self.mmio64);
                self.mmio64
                    .allocate(size, align)
                    .or_else(|| self.mmio32.allocate(size, align))
                    .ok_or(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_decode_from_register_bits() {
        assert_eq!(BarKind::from_register(0x1), BarKind::Io);
        assert_eq!(
            BarKind::from_register(0xfebf_0000),
            BarKind::Mem32 {
                prefetchable: false
            }
        );
        assert_eq!(
            BarKind::from_register(0x8),
            BarKind::Mem32 { prefetchable: true }
        );
        assert_eq!(
            BarKind::from_register(0x4),
            BarKind::Mem64 {
                prefetchable: false
            }
        );
        assert_eq!(
            BarKind::from_register(0xc),
            BarKind::Mem64 { prefetchable: true }
        );
    }

    #[test]
    fn sizing_write_reads_back_size_mask_with_type_bits() {
        let mut b = BarState::new(BarKind::Mem32 { prefetchable: true }, 0x4000, 0xfe00_0000);
        assert_eq!(b.read_low(), 0xfe00_0008);
        b.write_low(0xffff_ffff);
        assert_eq!(b.read_low(), 0xffff_c008, "size 16 KiB, prefetchable kept");
        b.write_low(0xfe00_4000);
        assert_eq!(b.addr, 0xfe00_4000);
    }

    #[test]
    fn mem64_bar_sizes_over_both_registers() {
        let mut b = BarState::new(BarKind::Mem64 { prefetchable: true }, 0x2_0000_0000, 0);
        b.write_low(0xffff_ffff);
        b.write_high(0xffff_ffff);
        assert_eq!(
            b.read_low(),
            0x0000_000c,
            "low bits: 64-bit + prefetchable only"
        );
        assert_eq!(b.read_high(), 0xffff_fffe, "8 GiB");
        b.write_high(0x40);
        b.write_low(0);
        assert_eq!(b.addr, 0x40_0000_0000);
    }

    #[test]
    fn io_bar_keeps_io_bit_and_size() {
        let mut b = BarState::new(BarKind::Io, 8, 0xc000);
        assert_eq!(b.read_low(), 0xc001);
        b.write_low(0xffff_ffff);
        assert_eq!(b.read_low(), 0xffff_fff9);
        // An unaligned programmed address is rounded down like hardware does.
        b.write_low(0xc00f);
        assert_eq!(b.addr, 0xc008);
    }

    #[test]
    fn tiny_and_odd_sizes_round_up() {
        assert_eq!(
            BarState::new(
                BarKind::Mem32 {
                    prefetchable: false
                },
                1,
                0
            )
            .size,
            16
        );
        assert_eq!(BarState::new(BarKind::Io, 3, 0).size, 4);
        assert_eq!(
            BarState::new(
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x3000,
                0
            )
            .size,
            0x4000
        );
    }

    #[test]
    fn allocator_aligns_naturally_and_page_aligns_small_bars() {
        let mut a = BarAllocator::new(
            Some(Window {
                base: 0xc000_0000,
                size: 0x1000_0000,
            }),
            Some(Window {
                base: 1 << 36,
                size: 1 << 36,
            }),
            Some(Window {
                base: 0xc000,
                size: 0x4000,
            }),
            DEFAULT_MMIO64_LIMIT,
        );
        let m = BarKind::Mem32 {
            prefetchable: false,
        };
        let small = a.allocate(m, 0x100).unwrap();
        assert_eq!(small % PAGE_SIZE, 0);
        let big = a.allocate(m, 0x10_0000).unwrap();
        assert_eq!(big % 0x10_0000, 0);
        assert!(big >= small + PAGE_SIZE, "small BAR owns its whole page");
        let io1 = a.allocate(BarKind::Io, 8).unwrap();
        let io2 = a.allocate(BarKind::Io, 0x100).unwrap();
        assert_eq!(io1 % 8, 0);
        assert_eq!(io2 % 0x100, 0);
        assert!(io1 + 8 <= io2 || io2 + 0x100 <= io1);
        let hi = a
            .allocate(BarKind::Mem64 { prefetchable: true }, 1 << 30)
            .unwrap();
        assert!(hi >= 1 << 36 && hi + (1 << 30) <= DEFAULT_MMIO64_LIMIT);
        assert_eq!(hi % (1 << 30), 0);
    }

    #[test]
    fn allocator_refuses_when_full_and_falls_back_for_64bit() {
        let mut a = BarAllocator::new(
            Some(Window {
                base: 0xe000_0000,
                size: 0x2000,
            }),
            None,
            None,
            DEFAULT_MMIO64_LIMIT,
        );
        let m64 = BarKind::Mem64 {
            prefetchable: false,
        };
        assert_eq!(a.allocate(m64, 0x1000).unwrap(), 0xe000_0000);
        assert_eq!(
            a.allocate(
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x1000
            )
            .unwrap(),
            0xe000_1000
        );
        assert!(matches!(
            a.allocate(
                BarKind::Mem32 {
                    prefetchable: false
                },
                0x1000
            ),
            Err(BarAllocError::NoSpace { .. })
        ));
        assert!(a.allocate(BarKind::Io, 4).is_err(), "no I/O window");
    }

    #[test]
    fn a_bar_that_does_not_fit_names_its_size_and_the_window() {
        let mut a = BarAllocator::new(
            None,
            Some(Window {
                base: 1 << 36,
                size: 1 << 36,
            }),
            None,
            1 << 39,
        );
        let e = a
            .allocate(BarKind::Mem64 { prefetchable: true }, 128 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("128 GiB") && e.contains("0x1000000000-0x1fffffffff"),
            "{e}"
        );
        assert!(e.contains("guest-physical limit"), "{e}");
    }

    #[test]
    fn mmio64_respects_the_iova_limit() {
        let mut a = BarAllocator::new(
            None,
            Some(Window {
                base: (1 << 39) - 0x10_0000,
                size: 1 << 40,
            }),
            None,
            DEFAULT_MMIO64_LIMIT,
        );
        let m64 = BarKind::Mem64 {
            prefetchable: false,
        };
        assert!(a.allocate(m64, 0x10_0000).is_ok());
        assert!(a.allocate(m64, 0x10_0000).is_err(), "would cross 2^39");
    }

    #[test]
    fn windows_hold_only_what_fits_in_one_window_of_the_kind() {
        let a = BarAllocator::new(
            Some(Window {
                base: 0xc000_0000,
                size: 0x3000_0000,
            }),
            Some(Window {
                base: 0x10_0000_0000,
                size: 1 << 40,
            }),
            Some(Window {
                base: 0xc000,
                size: 0x4000,
            }),
            1 << 39,
        );
        let w = a.windows();
        assert!(w.contains(false, 0xc000_0000, 0x1000));
        assert!(w.contains(false, 0xefff_f000, 0x1000));
        assert!(
            !w.contains(false, 0xefff_f000, 0x2000),
            "runs into the ECAM"
        );
        assert!(
            !w.contains(false, 0xfee0_0000, 0x1000),
            "the LAPIC/MSI page"
        );
        assert!(!w.contains(false, 0x1000_0000, 0x1000), "RAM");
        assert!(w.contains(false, 0x7f_ffff_f000, 0x1000));
        assert!(
            !w.contains(false, 0x80_0000_0000, 0x1000),
            "past the 64-bit limit"
        );
        assert!(!w.contains(false, u64::MAX, 2), "wraps");
        assert!(w.contains(true, 0xc000, 0x100));
        assert!(!w.contains(true, 0x3f8, 8), "the UART's ports");
        assert!(!w.contains(false, 0xc000, 0x100), "I/O is not memory");
        assert_eq!(w.describe(true), "0xc000-0xffff");
        assert_eq!(
            w.describe(false),
            "0xc0000000-0xefffffff, 0x1000000000-0x7fffffffff"
        );
        assert_eq!(BarWindows::default().describe(true), "none");
    }
}
