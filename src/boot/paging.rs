//! Identity page tables for the 64-bit entry.
//!
//! The 64-bit boot protocol enters with paging on and needs an identity map covering the
//! kernel, boot_params and the command line. passvm maps the whole first 4 GiB with 2 MiB
//! pages (one PML4 entry → one PDPT with four entries → four page directories): that covers
//! every boot structure, a kernel anywhere below the hole and an initramfs at the top of low
//! RAM, for 4 pages × 4 KiB of tables. The 3–4 GiB part maps MMIO, which is harmless: the
//! decompressor builds its own tables before touching anything but its own image.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// How many GiB the boot identity map covers.
pub const IDENTITY_MAPPED_GIB: u64 = 4;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Writes the PML4, PDPT and page directories; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT | WRITABLE, GuestAddress(PML4_START))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PRESENT | WRITABLE, GuestAddress(PDPTE_START + gib * 8))?;
        let mut entries = [0u8; 4096];
        for (i, chunk) in entries.chunks_exact_mut(8).enumerate() {
            let phys = (gib << 30) | ((i as u64) << 21);
            chunk.copy_from_slice(&(phys | PRESENT | WRITABLE | PAGE_SIZE_2M).to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd))?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables the way the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 0x1ff) * 8))
            .ok()?;
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))
            .ok()?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))
            .ok()?;
        if pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_four_gib_are_identity_mapped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        for va in [
            0,
            0x7000,
            0x100_0000 + 0x1234,
            0xbfff_f000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }
}
