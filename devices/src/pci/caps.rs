//! PCI capability lists: a bounded, loop-safe walk over a config-space snapshot, and the
//! patches that unlink capabilities the guest must not see.
//!
//! The chain comes from the device, so every pointer is treated as hostile: pointers are
//! masked to dword alignment, must land inside the space they belong to, and the walk
//! stops at a revisited offset or after as many hops as the space has room for.

/// Offset of the capabilities pointer in a type-0 header.
pub const CAP_POINTER: usize = 0x34;
/// Status register bit that says the capability list exists.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// First offset of the extended (PCIe) capability space.
pub const EXT_CAP_START: usize = 0x100;

/// Standard capability IDs the device model cares about.
pub mod id {
    /// Power management.
    pub const PM: u8 = 0x01;
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Extended capability IDs the device model cares about.
pub mod ext_id {
    /// Alternative Routing-ID Interpretation: meaningless for a function alone on its slot.
    pub const ARI: u16 = 0x0e;
    /// Single Root I/O Virtualization: the guest must not create VFs of a host device.
    pub const SRIOV: u16 = 0x10;
    /// Resizable BAR: a resize would not reach our BAR model or the mmaps.
    pub const RESIZABLE_BAR: u16 = 0x15;
}

/// One standard capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Offset of the capability header.
    pub offset: usize,
}

/// One extended capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtCapability {
    /// Extended capability ID.
    pub id: u16,
    /// Offset of the header (>= 0x100).
    pub offset: usize,
}

fn byte(cfg: &[u8], off: usize) -> u8 {
    cfg.get(off).copied().unwrap_or(0)
}

fn dword(cfg: &[u8], off: usize) -> u32 {
    match cfg.get(off..off + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// Walks the standard capability list of `cfg` (at least the 256-byte header space).
pub fn walk_standard(cfg: &[u8]) -> Vec<Capability> {
    let mut caps = Vec::new();
    let status = u16::from_le_bytes([byte(cfg, 6), byte(cfg, 7)]);
    if status & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut seen = [false; 64];
    let mut ptr = byte(cfg, CAP_POINTER) as usize & 0xfc;
    // 48 dword slots between 0x40 and 0xff: more hops than that means a loop.
    for _ in 0..48 {
        if !(0x40..=0xfc).contains(&ptr) || seen[ptr / 4] {
            break;
        }
        seen[ptr / 4] = true;
        caps.push(Capability {
            id: byte(cfg, ptr),
            offset: ptr,
        });
        ptr = byte(cfg, ptr + 1) as usize & 0xfc;
    }
    caps
}

/// Walks the extended capability list (needs a 4 KiB snapshot; empty otherwise).
pub fn walk_extended(cfg: &[u8]) -> Vec<ExtCapability> {
    let mut caps = Vec::new();
    if cfg.len() < 0x1000 {
        return caps;
    }
    let mut seen = [false; 1024];
    let mut ptr = EXT_CAP_START;
    for _ in 0..(0x1000 - EXT_CAP_START) / 4 {
        if !(EXT_CAP_START..=0xffc).contains(&ptr) || seen[ptr / 4] {
            break;
        }
        seen[ptr / 4] = true;
        let header = dword(cfg, ptr);
        if header == 0 || header == 0xffff_ffff {
            break;
        }
        caps.push(ExtCapability {
            id: (header & 0xffff) as u16,
            offset: ptr,
        });
        ptr = (header >> 20) as usize & 0xffc;
    }
    caps
}

/// A read-side override of config space: the guest sees `(hw & !mask) | (value & mask)`
/// for the dword at `offset`, and its writes to the masked bits are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigPatch {
    /// Dword-aligned config offset.
    pub offset: usize,
    /// Bits taken from `value` instead of the device.
    pub mask: u32,
    /// The value of the masked bits.
    pub value: u32,
}

/// Patches that unlink the standard capabilities with IDs in `hide` from the chain, by
/// pointing their predecessor (or the header's capability pointer) past them.
pub fn hide_standard(caps: &[Capability], hide: &[u8]) -> Vec<ConfigPatch> {
    let mut patches = Vec::new();
    // Where the pointer to the current capability lives.
    let mut link_at = CAP_POINTER;
    let mut pending_target: Option<usize> = None;
    for (i, cap) in caps.iter().enumerate() {
        if hide.contains(&cap.id) {
            let next = caps.get(i + 1).map_or(0, |c| c.offset);
            pending_target = Some(next);
            continue;
        }
        if let Some(target) = pending_target.take() {
            patches.push(byte_patch(link_at, target as u8));
        }
        link_at = cap.offset + 1;
    }
    if let Some(target) = pending_target {
        patches.push(byte_patch(link_at, target as u8));
    }
    patches
}

fn byte_patch(at: usize, value: u8) -> ConfigPatch {
    let shift = (at % 4) * 8;
    ConfigPatch {
        offset: at & !3,
        mask: 0xff << shift,
        value: (value as u32) << shift,
    }
}

/// Patches that unlink the extended capabilities with IDs in `hide`.
///
/// The list must start at 0x100, so a hidden first capability cannot be skipped by a
/// pointer: its ID and version become 0 (the "null" capability, which Linux walks past)
/// while its next pointer stays. Later ones are skipped by rewriting the next pointer of
/// the last visible capability before them.
pub fn hide_extended(caps: &[ExtCapability], hide: &[u16]) -> Vec<ConfigPatch> {
    let mut patches = Vec::new();
    let mut last_visible: Option<usize> = None;
    let mut pending_target: Option<usize> = None;
    for (i, cap) in caps.iter().enumerate() {
        if hide.contains(&cap.id) {
            match last_visible {
                None if cap.offset == EXT_CAP_START => patches.push(ConfigPatch {
                    offset: cap.offset,
                    mask: 0x000f_ffff,
                    value: 0,
                }),
                _ => pending_target = Some(caps.get(i + 1).map_or(0, |c| c.offset)),
            }
            if cap.offset == EXT_CAP_START {
                // The null header now stands in as the visible head.
                last_visible = Some(cap.offset);
            }
            continue;
        }
        if let (Some(target), Some(prev)) = (pending_target.take(), last_visible) {
            patches.push(next_ptr_patch(prev, target));
        }
        last_visible = Some(cap.offset);
    }
    if let (Some(target), Some(prev)) = (pending_target, last_visible) {
        patches.push(next_ptr_patch(prev, target));
    }
    patches
}

/// The next-pointer bits are disjoint from the ID/version bits, so this combines with the
/// null-ing patch of the head.
fn next_ptr_patch(at: usize, target: usize) -> ConfigPatch {
    ConfigPatch {
        offset: at,
        mask: 0xfff0_0000,
        value: (target as u32) << 20,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(size: usize) -> Vec<u8> {
        let mut cfg = vec![0u8; size];
        cfg[6] = STATUS_CAP_LIST as u8;
        cfg
    }

    fn add_cap(cfg: &mut [u8], at: usize, id: u8, next: u8) {
        cfg[at] = id;
        cfg[at + 1] = next;
    }

    fn add_ext(cfg: &mut [u8], at: usize, id: u16, next: usize) {
        let h = id as u32 | (1 << 16) | ((next as u32) << 20);
        cfg[at..at + 4].copy_from_slice(&h.to_le_bytes());
    }

    /// Applies patches the way the config-space model does, for assertions.
    fn apply(cfg: &mut [u8], patches: &[ConfigPatch]) {
        for p in patches {
            let hw = dword(cfg, p.offset);
            let v = (hw & !p.mask) | (p.value & p.mask);
            cfg[p.offset..p.offset + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    #[test]
    fn walks_a_normal_chain_and_masks_low_pointer_bits() {
        let mut cfg = space(256);
        cfg[CAP_POINTER] = 0x43; // low bits must be ignored
        add_cap(&mut cfg, 0x40, id::PM, 0x53);
        add_cap(&mut cfg, 0x50, id::MSI, 0x70);
        add_cap(&mut cfg, 0x70, id::MSIX, 0);
        let caps = walk_standard(&cfg);
        let ids: Vec<_> = caps.iter().map(|c| (c.id, c.offset)).collect();
        assert_eq!(ids, vec![(id::PM, 0x40), (id::MSI, 0x50), (id::MSIX, 0x70)]);
    }

    #[test]
    fn stops_on_loops_and_bad_pointers() {
        let mut cfg = space(256);
        cfg[CAP_POINTER] = 0x40;
        add_cap(&mut cfg, 0x40, id::PM, 0x50);
        add_cap(&mut cfg, 0x50, id::MSI, 0x40); // loop back
        assert_eq!(walk_standard(&cfg).len(), 2);

        add_cap(&mut cfg, 0x50, id::MSI, 0x50); // self loop
        assert_eq!(walk_standard(&cfg).len(), 2);

        add_cap(&mut cfg, 0x50, id::MSI, 0x20); // points into the header
        assert_eq!(walk_standard(&cfg).len(), 2);

        cfg[CAP_POINTER] = 0x10;
        assert!(walk_standard(&cfg).is_empty(), "pointer below 0x40");

        cfg[CAP_POINTER] = 0x40;
        cfg[6] = 0;
        assert!(walk_standard(&cfg).is_empty(), "status says no list");

        // A short snapshot never panics.
        assert!(walk_standard(&[0u8; 8]).is_empty());
    }

    #[test]
    fn extended_walk_is_bounded() {
        let mut cfg = space(4096);
        add_ext(&mut cfg, 0x100, 0x1, 0x140);
        add_ext(&mut cfg, 0x140, ext_id::SRIOV, 0x100); // loop
        assert_eq!(walk_extended(&cfg).len(), 2);
        add_ext(&mut cfg, 0x140, ext_id::SRIOV, 0x80); // into standard space: end
        assert_eq!(walk_extended(&cfg).len(), 2);
        assert!(walk_extended(&cfg[..256]).is_empty(), "conventional PCI");
        let mut ones = space(4096);
        ones[0x100..0x104].copy_from_slice(&[0xff; 4]);
        assert!(walk_extended(&ones).is_empty());
    }

    #[test]
    fn hidden_standard_caps_are_unlinked() {
        let mut cfg = space(256);
        cfg[CAP_POINTER] = 0x40;
        add_cap(&mut cfg, 0x40, 0x09, 0x50); // vendor, hidden
        add_cap(&mut cfg, 0x50, id::MSI, 0x60);
        add_cap(&mut cfg, 0x60, 0x09, 0x70); // hidden
        add_cap(&mut cfg, 0x70, id::MSIX, 0x80);
        add_cap(&mut cfg, 0x80, 0x09, 0); // hidden, last
        let caps = walk_standard(&cfg);
        let patches = hide_standard(&caps, &[0x09]);
        apply(&mut cfg, &patches);
        let seen: Vec<_> = walk_standard(&cfg).iter().map(|c| c.id).collect();
        assert_eq!(seen, vec![id::MSI, id::MSIX]);
    }

    #[test]
    fn sriov_rebar_ari_are_unlinked_from_the_extended_chain() {
        let mut cfg = space(4096);
        add_ext(&mut cfg, 0x100, ext_id::ARI, 0x140); // first: becomes a null cap
        add_ext(&mut cfg, 0x140, 0x1, 0x180); // AER, kept
        add_ext(&mut cfg, 0x180, ext_id::SRIOV, 0x1c0);
        add_ext(&mut cfg, 0x1c0, ext_id::RESIZABLE_BAR, 0x200);
        add_ext(&mut cfg, 0x200, 0x19, 0); // secondary PCIe, kept
        let hide = [ext_id::ARI, ext_id::SRIOV, ext_id::RESIZABLE_BAR];
        let caps = walk_extended(&cfg);
        apply(&mut cfg, &hide_extended(&caps, &hide));
        let seen: Vec<_> = walk_extended(&cfg)
            .iter()
            .map(|c| (c.id, c.offset))
            .collect();
        assert_eq!(seen, vec![(0, 0x100), (0x1, 0x140), (0x19, 0x200)]);
    }

    #[test]
    fn hiding_the_tail_terminates_the_chain() {
        let mut cfg = space(4096);
        add_ext(&mut cfg, 0x100, 0x1, 0x180);
        add_ext(&mut cfg, 0x180, ext_id::SRIOV, 0);
        let caps = walk_extended(&cfg);
        apply(&mut cfg, &hide_extended(&caps, &[ext_id::SRIOV]));
        let seen: Vec<_> = walk_extended(&cfg).iter().map(|c| c.id).collect();
        assert_eq!(seen, vec![0x1]);
    }
}
