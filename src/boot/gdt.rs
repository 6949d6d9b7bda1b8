//! The boot GDT and the segment registers derived from it.
//!
//! One table serves both entry protocols, so the segment registers (which cache the
//! descriptor contents) always match what is in guest memory:
//!
//! | selector | descriptor                                  | used by         |
//! |----------|---------------------------------------------|-----------------|
//! | 0x00     | null                                        |                 |
//! | 0x08     | null                                        |                 |
//! | 0x10     | 64-bit code, flat (L=1)                     | Linux64 `CS`    |
//! | 0x18     | 32-bit data, flat 4 GiB, read/write         | both: DS ES SS… |
//! | 0x20     | 32-bit TSS, busy, base 0 limit 0x67         | both: `TR`      |
//! | 0x28     | 32-bit code, flat 4 GiB (D=1)               | PVH `CS`        |
//!
//! The 64-bit boot protocol (Documentation/arch/x86/boot.rst) requires `__BOOT_CS` = 0x10
//! and `__BOOT_DS` = 0x18 with flat 4 GiB segments. PVH only asks for flat 32-bit code/data
//! and a valid TSS (selectors unspecified). VMX refuses to enter a guest whose `TR` is not a
//! busy TSS, hence the TSS entry although nothing switches tasks.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x20;
/// Selector of the 32-bit code segment (PVH).
pub const CODE32_SELECTOR: u16 = 0x28;

// Access bytes and flags (high nibble) of the descriptors, as `flags << 12 | access`.
const CODE64: u16 = 0xa09b; // G, L; present, DPL0, code, execute/read, accessed
const DATA: u16 = 0xc093; // G, D/B; present, DPL0, data, read/write, accessed
const TSS: u16 = 0x008b; // byte granular; present, system, 32-bit busy TSS
const CODE32: u16 = 0xc09b; // G, D/B; present, DPL0, code, execute/read, accessed

/// The GDT as it is written to guest memory.
pub fn table() -> [u64; 6] {
    [
        0,
        0,
        descriptor(CODE64, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS, 0, 0x67),
        descriptor(CODE32, 0, 0xfffff),
    ]
}

/// Packs a segment descriptor. `flags` holds G/DB/L/AVL in bits 15..12 and the access byte
/// in bits 7..0; `limit` is the raw 20-bit field.
const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` that loading `selector` from [`table`] produces.
pub fn segment(selector: u16) -> kvm_segment {
    let index = usize::from(selector >> 3);
    let entry = table().get(index).copied().unwrap_or(0);
    segment_from_descriptor(entry, selector)
}

fn segment_from_descriptor(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    // KVM wants the limit in bytes: with G=1 the 20-bit field counts 4 KiB pages.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_as_the_manuals_say() {
        let t = table();
        assert_eq!(t[2], 0x00af_9b00_0000_ffff, "64-bit flat code");
        assert_eq!(t[3], 0x00cf_9300_0000_ffff, "flat data");
        assert_eq!(t[4], 0x0000_8b00_0000_0067, "busy TSS");
        assert_eq!(t[5], 0x00cf_9b00_0000_ffff, "32-bit flat code");
    }

    #[test]
    fn segments_decode_from_the_table() {
        let cs = segment(CODE64_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.type_, cs.limit), (1, 0, 0xb, 0xffff_ffff));
        let cs32 = segment(CODE32_SELECTOR);
        assert_eq!((cs32.l, cs32.db, cs32.s), (0, 1, 1));
        let ds = segment(DATA_SELECTOR);
        assert_eq!(
            (ds.type_, ds.db, ds.limit, ds.present),
            (3, 1, 0xffff_ffff, 1)
        );
        let tr = segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.limit, tr.base), (0xb, 0, 0x67, 0));
        assert_eq!(segment(0x100).unusable, 1);
    }
}
