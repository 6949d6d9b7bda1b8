//! Fixed guest-physical addresses of the boot structures below 1 MiB.
//!
//! ```text
//! 0x0500  GDT              (gdt.rs; null, null, code 0x10, data 0x18, TSS 0x20)
//! 0x6000  hvm_start_info   (PVH only)
//! 0x6040  hvm_modlist      (PVH only; the initramfs)
//! 0x7000  boot_params      (Linux64: the "zero page") or the PVH memory map table
//! 0x8ff0  initial stack    (grows down; the kernel switches to its own at once)
//! 0x9000  PML4             (Linux64 identity map, paging.rs)
//! 0xa000  PDPT
//! 0xb000  4 page directories of 2 MiB pages (0-4 GiB)
//! 0x20000 kernel command line (NUL-terminated)
//! 0x9fc00 MP floating pointer + MP configuration table (mptable.rs)
//! 1 MiB   bzImage protected-mode code (code32_start); vmlinux loads at its p_paddr (16 MiB)
//! high    initramfs, at the top of the RAM below the 32-bit hole
//! ```
//!
//! All of this is e820 RAM except the MP table, which sits in the reserved EBDA. Linux
//! copies boot_params, start_info and the command line early and builds its own page tables
//! and GDT, so none of these pages needs to survive past early boot.

/// GDT (6 entries of 8 bytes).
pub const GDT_START: u64 = 0x500;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// Linux `boot_params` (zero page), or the PVH memory map.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// PVH memory map table; shares the page with boot_params since a boot uses one protocol.
pub const PVH_MEMMAP_START: u64 = ZERO_PAGE_START;
/// Initial stack pointer (16-byte aligned, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 of the identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of the page directories (one per GiB identity-mapped).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Longest command line passvm writes, including the NUL (Linux x86 `COMMAND_LINE_SIZE`).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// MP floating pointer, followed by the configuration table.
pub const MPTABLE_START: u64 = crate::memory::EBDA_START;
/// Where the kernel may start (protected-mode code of a bzImage at the earliest).
pub const KERNEL_MIN_ADDR: u64 = crate::memory::HIGH_RAM_START;
