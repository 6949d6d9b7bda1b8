//! `boot_params` (the "zero page") for the Linux 64-bit boot protocol.
//!
//! Starts from the setup header read out of the bzImage, as Documentation/arch/x86/boot.rst
//! asks ("copy the setup header ... then fill in the fields a boot loader must set"), and
//! sets what the kernel reads on the 64-bit path:
//!
//! - `type_of_loader` = 0xff ("undefined" boot loader; no ext_loader_type/version);
//! - `cmd_line_ptr` (and `ext_cmd_line_ptr` = 0: the command line is below 4 GiB);
//! - `ramdisk_image` / `ramdisk_size` (+ `ext_*` high halves, 0 here: the initramfs is below
//!   the 32-bit hole, within `initrd_addr_max`);
//! - the e820 table and `e820_entries` (at most 128 in the zero page);
//! - `loadflags` stays as the image has it (`LOADED_HIGH`): `CAN_USE_HEAP`/`heap_end_ptr`
//!   and `KEEP_SEGMENTS` only concern the real-mode setup code and the 32-bit entry, neither
//!   of which runs;
//! - `vid_mode` = 0xffff ("normal"), as no video mode is being chosen for the kernel.
//!
//! `hdr.code32_start` already holds the load address (linux-loader writes it back).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::memory::E820Entry;

use super::BootError;

/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Capacity of the zero page's e820 table.
pub const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;
const VID_MODE_NORMAL: u16 = 0xffff;

/// Inputs to the zero page besides the image's setup header.
#[derive(Debug, Clone, Copy)]
pub struct ZeroPage<'a> {
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Initramfs (address, size), if any.
    pub initramfs: Option<(u64, u64)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// The ACPI RSDP (`acpi_rsdp_addr`, boot protocol 2.14; older kernels scan for it).
    pub rsdp: Option<u64>,
}

/// Builds `boot_params` from the image's setup header.
pub fn build(hdr: setup_header, zp: &ZeroPage) -> Result<boot_params, BootError> {
    if zp.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyE820Entries(zp.e820.len()));
    }
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.vid_mode = VID_MODE_NORMAL;
    params.hdr.cmd_line_ptr = low32(zp.cmdline_addr);
    params.ext_cmd_line_ptr = high32(zp.cmdline_addr);
    if let Some((addr, size)) = zp.initramfs {
        params.hdr.ramdisk_image = low32(addr);
        params.ext_ramdisk_image = high32(addr);
        params.hdr.ramdisk_size = low32(size);
        params.ext_ramdisk_size = high32(size);
    }
    for (slot, e) in params.e820_table.iter_mut().zip(zp.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = zp.e820.len() as u8;
    params.acpi_rsdp_addr = zp.rsdp.unwrap_or(0);
    Ok(params)
}

/// The longest command line (without NUL) the kernel of this header accepts.
pub fn max_cmdline_len(hdr: &setup_header) -> usize {
    let version = hdr.version;
    // cmdline_size exists from protocol 2.06; before that the limit was 255.
    if version >= 0x0206 {
        hdr.cmdline_size as usize
    } else {
        255
    }
}

/// Highest address (inclusive) the initramfs may reach for this kernel.
pub fn initrd_addr_max(hdr: &setup_header) -> u64 {
    let version = hdr.version;
    // initrd_addr_max exists from 2.03; older kernels assume 0x37ffffff.
    if version >= 0x0203 && hdr.initrd_addr_max != 0 {
        u64::from(hdr.initrd_addr_max)
    } else {
        0x37ff_ffff
    }
}

fn low32(v: u64) -> u32 {
    v as u32
}

fn high32(v: u64) -> u32 {
    (v >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryLayout;

    fn header() -> setup_header {
        setup_header {
            version: 0x020f,
            header: 0x5372_6448,
            code32_start: 0x10_0000,
            loadflags: 1,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            xloadflags: 1,
            ..Default::default()
        }
    }

    #[test]
    fn zero_page_carries_cmdline_ramdisk_loader_and_e820() {
        let e820 =
            crate::memory::e820_from_ram(MemoryLayout::new(512 << 20).unwrap().ram.into_iter());
        let p = build(
            header(),
            &ZeroPage {
                cmdline_addr: 0x2_0000,
                initramfs: Some((0x1f00_0000, 0x12_3456)),
                e820: &e820,
                rsdp: Some(0xe_0000),
            },
        )
        .unwrap();
        let h = p.hdr;
        assert_eq!({ h.type_of_loader }, 0xff);
        assert_eq!({ h.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ h.ramdisk_image }, 0x1f00_0000);
        assert_eq!({ h.ramdisk_size }, 0x12_3456);
        assert_eq!({ h.header }, 0x5372_6448, "image's header kept");
        assert_eq!({ h.code32_start }, 0x10_0000);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(usize::from(p.e820_entries), e820.len());
        for (i, e) in e820.iter().enumerate() {
            let t = p.e820_table[i];
            assert_eq!(
                ({ t.addr }, { t.size }, { t.r#type }),
                (e.addr, e.size, e.kind)
            );
        }
    }

    #[test]
    fn limits_come_from_the_header() {
        let h = header();
        assert_eq!(max_cmdline_len(&h), 2047);
        assert_eq!(initrd_addr_max(&h), 0x7fff_ffff);
        let old = setup_header {
            version: 0x0202,
            ..h
        };
        assert_eq!(max_cmdline_len(&old), 255);
        assert_eq!(initrd_addr_max(&old), 0x37ff_ffff);
    }

    #[test]
    fn oversized_e820_is_refused() {
        let e = vec![
            E820Entry {
                addr: 0,
                size: 4096,
                kind: 1
            };
            129
        ];
        let zp = ZeroPage {
            cmdline_addr: 0,
            initramfs: None,
            e820: &e,
            rsdp: None,
        };
        assert!(build(header(), &zp).is_err());
    }
}
