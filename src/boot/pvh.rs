//! `hvm_start_info` for the PVH entry (xen/include/public/arch-x86/hvm/start_info.h).
//!
//! Version 1 of the structure, which adds the memory map: Linux refuses a version 0
//! start_info on anything but Xen (`init_pvh_bootparams` BUGs), because without the memmap
//! it would have to ask the hypervisor for the e820. Fields:
//!
//! - `magic` = 0x336ec578, `version` = 1, `flags` = 0;
//! - `cmdline_paddr` → the NUL-terminated command line;
//! - `nr_modules` / `modlist_paddr` → one `hvm_modlist_entry` for the initramfs (Linux takes
//!   the first module as the ramdisk);
//! - `memmap_paddr` / `memmap_entries` → the e820 map as `hvm_memmap_table_entry`s;
//! - `rsdp_paddr`: the ACPI tables' RSDP (0 without tables: Linux then scans for one, and
//!   falls back to the MP table).

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

use crate::memory::E820Entry;

/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Addresses and contents that go into the start info.
#[derive(Debug, Clone, Copy)]
pub struct StartInfoInputs<'a> {
    /// Guest address of the command line.
    pub cmdline_addr: u64,
    /// Initramfs (address, size), if any.
    pub initramfs: Option<(u64, u64)>,
    /// Where the module list goes.
    pub modlist_addr: u64,
    /// Where the memory map goes.
    pub memmap_addr: u64,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// The ACPI RSDP, when there are ACPI tables.
    pub rsdp: Option<u64>,
}

/// The start info, its memory map and its module list.
pub fn build(
    inputs: &StartInfoInputs,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<hvm_memmap_table_entry> = inputs
        .e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = inputs
        .initramfs
        .iter()
        .map(|&(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            inputs.modlist_addr
        },
        cmdline_paddr: inputs.cmdline_addr,
        rsdp_paddr: inputs.rsdp.unwrap_or(0),
        memmap_paddr: inputs.memmap_addr,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    (info, memmap, modules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryLayout;

    #[test]
    fn start_info_points_at_cmdline_memmap_and_initramfs() {
        let e820 =
            crate::memory::e820_from_ram(MemoryLayout::new(5 << 30).unwrap().ram.into_iter());
        let (info, memmap, modules) = build(&StartInfoInputs {
            cmdline_addr: 0x2_0000,
            initramfs: Some((0xbf00_0000, 0x40_0000)),
            modlist_addr: 0x6040,
            memmap_addr: 0x7000,
            e820: &e820,
            rsdp: Some(0xe_0000),
        });
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, 0x2_0000);
        assert_eq!(info.memmap_paddr, 0x7000);
        assert_eq!(info.memmap_entries as usize, e820.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, 0x6040);
        assert_eq!(
            (modules[0].paddr, modules[0].size),
            (0xbf00_0000, 0x40_0000)
        );
        let high = memmap.last().unwrap();
        assert_eq!((high.addr, high.size, high.type_), (1 << 32, 2 << 30, 1));
    }

    #[test]
    fn no_initramfs_means_no_modules() {
        let e820 =
            crate::memory::e820_from_ram(MemoryLayout::new(256 << 20).unwrap().ram.into_iter());
        let (info, _, modules) = build(&StartInfoInputs {
            cmdline_addr: 0x2_0000,
            initramfs: None,
            modlist_addr: 0x6040,
            memmap_addr: 0x7000,
            e820: &e820,
            rsdp: None,
        });
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert!(modules.is_empty());
    }
}
