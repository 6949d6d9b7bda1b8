//! BAR sizing and programming sequences: all-ones sizing writes, addresses anywhere
//! (RAM, the LAPIC, IOAPIC and ECAM, the other device's BAR, the windows' edges, where
//! another BAR of the device is, above the 64-bit limit), 64-bit halves in either order,
//! the command register's decode bits, D3hot and D0 through PMCSR, the ROM BAR, and
//! reboots, interleaved with trapped accesses at the BARs' addresses. After each step
//! `Harness::check` must hold (nothing of the VMM's taken, every slot inside a decoding
//! BAR of the device, no stale trap), and a sizing write must read back the BAR's size.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use passvm_fuzz::{
    bar_access, AccessLen, BarShape, Base, Harness, MsixShape, Width, IO, MMIO32, MMIO64,
    PLATFORM_MMIO, PLATFORM_PIO, PMCSR,
};

/// Where a BAR is pointed.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Place {
    /// The start of a VMM range (MMIO or port), or `delta` pages into it.
    Platform {
        index: u8,
        pages: u16,
        io: bool,
    },
    /// Near an edge of a window: `delta` bytes (signed) from its start or end.
    WindowEdge {
        window: u8,
        end: bool,
        delta: i32,
    },
    /// Where BAR `index` (summary order) or the ROM is now.
    OtherBar(u8),
    /// Anywhere in a window.
    InWindow {
        window: u8,
        offset: u64,
    },
    /// Any address.
    Raw(u64),
    /// The sizing value.
    AllOnes,
    Zero,
}

impl Place {
    fn resolve(self, h: &Harness) -> u64 {
        match self {
            Place::Platform { index, pages, io } => {
                let (base, len) = if io {
                    let r = PLATFORM_PIO[usize::from(index) % PLATFORM_PIO.len()];
                    (r.1, r.2)
                } else {
                    let r = PLATFORM_MMIO[usize::from(index) % PLATFORM_MMIO.len()];
                    (r.1, r.2)
                };
                base + (u64::from(pages) * 4096) % len
            }
            Place::WindowEdge { window, end, delta } => {
                let w = [MMIO32, MMIO64, IO][usize::from(window) % 3];
                let at = if end { w.base + w.size } else { w.base };
                at.wrapping_add_signed(i64::from(delta))
            }
            Place::OtherBar(i) => {
                let dev = h.dev();
                let bars = dev.bar_summaries();
                match bars.get(usize::from(i) % (bars.len() + 1)) {
                    Some(b) => b.addr,
                    None => u64::from(dev.read_config(0x30) & !0x7ff),
                }
            }
            Place::InWindow { window, offset } => {
                let w = [MMIO32, MMIO64, IO][usize::from(window) % 3];
                w.base + offset % w.size
            }
            Place::Raw(a) => a,
            Place::AllOnes => u64::MAX,
            Place::Zero => 0,
        }
    }
}

/// How a 64-bit address reaches the two registers.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Halves {
    LowThenHigh,
    HighThenLow,
    LowOnly,
    HighOnly,
    /// Byte by byte, low register first.
    Bytes,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The sizing dance on BAR register `reg` (0-5): all ones, read back, restore.
    Size {
        reg: u8,
        restore: bool,
    },
    /// Points the BAR at `reg` (and, for a 64-bit BAR, the register after it) at `place`.
    Program {
        reg: u8,
        place: Place,
        halves: Halves,
    },
    /// The ROM BAR: address and enable bit.
    Rom {
        place: Place,
        enable: bool,
    },
    /// The command register's I/O, memory and bus-master bits, as a word or a byte.
    Command {
        bits: u8,
        width: Width,
    },
    /// PMCSR's PowerState (3 = D3hot) with PME bits, as a dword or a byte.
    Power {
        state: u8,
        pme: bool,
        byte: bool,
    },
    /// A trapped access at a BAR-relative base.
    Access {
        base: Base,
        offset: u32,
        len: AccessLen,
        write: Option<u64>,
    },
    /// An access at an absolute address, routed by the device's trapped ranges the way
    /// the VMM's bus would.
    At {
        place: Place,
        len: AccessLen,
        write: Option<u64>,
    },
    Reset,
}

/// What BAR `reg` reads after all-ones writes: the low register and, for a 64-bit BAR,
/// the high one.
fn sized(h: &Harness, reg: usize) -> Option<(u32, Option<u32>)> {
    let dev = h.dev();
    let b = dev.bar_summaries().into_iter().find(|b| b.index == reg)?;
    let mask = !(b.size - 1);
    let low = (mask as u32) | b.kind.type_bits();
    let high = b.kind.is_64bit().then_some((mask >> 32) as u32);
    Some((low, high))
}

/// Whether register `reg` is the high half of a 64-bit BAR.
fn upper_half(h: &Harness, reg: usize) -> bool {
    h.dev()
        .bar_summaries()
        .iter()
        .any(|b| b.kind.is_64bit() && b.index + 1 == reg)
}

fn w32(h: &Harness, off: usize, v: u32) {
    h.dev().write_config(off, 0, &v.to_le_bytes());
}

fn program(h: &Harness, reg: usize, addr: u64, halves: Halves) {
    let (lo, hi) = (0x10 + 4 * reg, 0x14 + 4 * reg);
    let (l, u) = (addr as u32, (addr >> 32) as u32);
    match halves {
        Halves::LowThenHigh => {
            w32(h, lo, l);
            if reg < 5 {
                w32(h, hi, u);
            }
        }
        Halves::HighThenLow => {
            if reg < 5 {
                w32(h, hi, u);
            }
            w32(h, lo, l);
        }
        Halves::LowOnly => w32(h, lo, l),
        Halves::HighOnly if reg < 5 => w32(h, hi, u),
        Halves::HighOnly => {}
        Halves::Bytes => {
            for (i, b) in addr.to_le_bytes().iter().enumerate() {
                if i < 4 || reg < 5 {
                    h.dev().write_config(lo + (i / 4) * 4, i % 4, &[*b]);
                }
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    bars: BarShape,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let h = Harness::with_bars(MsixShape::DEFAULT, &input.bars);
    for op in input.ops.into_iter().take(256) {
        match op {
            Op::Size { reg, restore } => {
                let reg = usize::from(reg % 6);
                let off = 0x10 + 4 * reg;
                let before = h.dev().read_config(off);
                w32(&h, off, 0xffff_ffff);
                let got = h.dev().read_config(off);
                if let Some((low, high)) = sized(&h, reg) {
                    assert_eq!(got, low, "BAR{reg} sized");
                    if let Some(high) = high {
                        w32(&h, off + 4, 0xffff_ffff);
                        assert_eq!(h.dev().read_config(off + 4), high, "BAR{reg} high sized");
                    }
                } else if !upper_half(&h, reg) {
                    assert_eq!(got, 0, "unimplemented BAR{reg}");
                }
                if restore {
                    w32(&h, off, before);
                }
            }
            Op::Program { reg, place, halves } => {
                let addr = place.resolve(&h);
                program(&h, usize::from(reg % 6), addr, halves);
            }
            Op::Rom { place, enable } => {
                let addr = place.resolve(&h) as u32 & !0x7ff;
                w32(&h, 0x30, addr | u32::from(enable));
            }
            Op::Command { bits, width } => {
                let v = u16::from(bits & 0x7) | (u16::from(bits & 0xf8) << 3);
                let data = v.to_le_bytes();
                let len = width.bytes().min(2);
                h.dev().write_config(0x04, 0, &data[..len]);
            }
            Op::Power { state, pme, byte } => {
                let v = u32::from(state & 3) | if pme { 0x8100 } else { 0 };
                if byte {
                    h.dev().write_config(PMCSR, 0, &[v as u8]);
                } else {
                    w32(&h, PMCSR, v);
                }
            }
            Op::Access {
                base,
                offset,
                len,
                write,
            } => {
                let mut dev = h.dev();
                let base = base.resolve(&dev);
                bar_access(&mut dev, base, u64::from(offset), len.bytes(), write);
            }
            Op::At { place, len, write } => {
                let addr = place.resolve(&h);
                let mut dev = h.dev();
                let hit = dev
                    .trapped_ranges()
                    .into_iter()
                    .find(|r| addr >= r.1 && addr - r.1 < r.2);
                if let Some((_, base, _)) = hit {
                    bar_access(&mut dev, base, addr - base, len.bytes(), write);
                }
            }
            Op::Reset => h.reset(),
        }
        h.check();
    }
    h.teardown();
});
