//! Kernel image format detection and loading with linux-loader.
//!
//! The format is decided from the file's bytes, never its name: an ELF image starts with
//! `\x7fELF`; a bzImage carries the `HdrS` magic of the x86 boot protocol at offset 0x202.
//! Anything else is rejected with a message naming both accepted formats.
//!
//! - **ELF `vmlinux`**: its `PT_LOAD` segments go to their physical addresses (`p_paddr`,
//!   16 MiB for a default build), and it is entered at the 32-bit PVH entry point from the
//!   `XEN_ELFNOTE_PHYS32_ENTRY` note (Linux has it with `CONFIG_PVH=y`). There is no other
//!   safe entry: `e_entry` is `startup_64`, which expects boot_params *and* a page table
//!   set-up that only the decompressor path provides. So a vmlinux without the note is an
//!   error that points to the bzImage.
//! - **bzImage**: the protected-mode part (after the `setup_sects` real-mode sectors) goes to
//!   `code32_start` (1 MiB); the 64-bit entry is `code32_start + 0x200`, which requires
//!   `XLF_KERNEL_64` in `xloadflags` (boot protocol ≥ 2.12, a 64-bit kernel). The real-mode
//!   setup code is never run.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::KERNEL_MIN_ADDR;
use super::BootError;

/// Offset of the setup header's `header` field ("HdrS").
const HDRS_OFFSET: usize = 0x202;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
/// `xloadflags` bit: the kernel has the 64-bit entry point at `code32_start + 0x200`.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry from the start of the protected-mode code.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// What kind of kernel image a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux`.
    Elf,
    /// A bzImage (x86 boot protocol).
    BzImage,
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the vCPU starts.
    pub entry: GuestAddress,
    /// First byte past the kernel image (or past its decompression area for a bzImage).
    pub end: u64,
    /// The bzImage setup header, patched with the load address; `None` for vmlinux.
    pub setup_header: Option<setup_header>,
}

/// Classifies a kernel image from its first bytes.
pub fn detect_format(head: &[u8], path: &Path) -> Result<KernelFormat, BootError> {
    if head.starts_with(ELF_MAGIC) {
        let class = head.get(4).copied();
        let machine = head.get(18..20).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if class != Some(ELFCLASS64) || machine != Some(EM_X86_64) {
            return Err(BootError::UnsupportedElf {
                path: path.to_path_buf(),
            });
        }
        return Ok(KernelFormat::Elf);
    }
    if head.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(HDRS_MAGIC.as_slice()) {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

/// Detects the format of `path` and loads it into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let io_err = |source| BootError::KernelIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut head = Vec::with_capacity(HDRS_OFFSET + 4);
    (&mut file)
        .take((HDRS_OFFSET + 4) as u64)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    let format = detect_format(&head, path)?;
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;

    let himem = Some(GuestAddress(KERNEL_MIN_ADDR));
    match format {
        KernelFormat::Elf => {
            let res =
                Elf::load(mem, None, &mut file, himem).map_err(|e| load_error(e, path, mem))?;
            match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
                    entry,
                    end: res.kernel_end,
                    setup_header: None,
                }),
                _ => Err(BootError::NoPvhNote {
                    path: path.to_path_buf(),
                }),
            }
        }
        KernelFormat::BzImage => {
            let res =
                BzImage::load(mem, None, &mut file, himem).map_err(|e| load_error(e, path, mem))?;
            let hdr = res.setup_header.ok_or_else(|| BootError::BadBzImage {
                path: path.to_path_buf(),
                reason: "linux-loader returned no setup header".into(),
            })?;
            let xloadflags = hdr.xloadflags;
            if xloadflags & XLF_KERNEL_64 == 0 {
                let version = hdr.version;
                return Err(BootError::BadBzImage {
                    path: path.to_path_buf(),
                    reason: format!(
                        "it has no 64-bit entry point (boot protocol {}.{:02}, xloadflags {xloadflags:#x}); passvm needs a 64-bit x86 kernel",
                        version >> 8,
                        version & 0xff
                    ),
                });
            }
            let code32_start = u64::from(hdr.code32_start);
            // The 64-bit decompressor works in init_size bytes from the higher of its load
            // address and pref_address (LOAD_PHYSICAL_ADDR); nothing of ours may sit there.
            let base = hdr.pref_address.max(code32_start);
            let init_size = u64::from(hdr.init_size);
            let end = res.kernel_end.max(base.saturating_add(init_size));
            Ok(LoadedKernel {
                entry: GuestAddress(code32_start + BZIMAGE_64BIT_ENTRY_OFFSET),
                end,
                setup_header: Some(hdr),
            })
        }
    }
}

fn load_error(e: loader::Error, path: &Path, mem: &GuestMemoryMmap) -> BootError {
    use loader::bzimage::Error as Bz;
    use loader::elf::Error as El;
    let path = path.to_path_buf();
    match e {
        loader::Error::Elf(El::ReadKernelImage) | loader::Error::MemoryOverflow => {
            BootError::KernelTooBig {
                path,
                low_ram_mib: crate::memory::low_ram_end(mem) >> 20,
            }
        }
        loader::Error::Bzimage(Bz::ReadBzImageCompressedKernel) => BootError::KernelTooBig {
            path,
            low_ram_mib: crate::memory::low_ram_end(mem) >> 20,
        },
        loader::Error::Bzimage(inner) => BootError::BadBzImage {
            path,
            reason: format!("{inner} (truncated or corrupt file?)"),
        },
        other => BootError::BadElf {
            path,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal x86-64 ELF: one PT_LOAD segment at `paddr` with `payload`, and optionally a
    /// PT_NOTE holding a Xen PHYS32_ENTRY note pointing at `paddr`.
    pub(crate) fn make_elf(paddr: u64, payload: &[u8], pvh: bool) -> Vec<u8> {
        let phnum: u16 = if pvh { 2 } else { 1 };
        let ehsize = 64u64;
        let phentsize = 56u64;
        let note_off = ehsize + phentsize * u64::from(phnum);
        let mut note = Vec::new();
        if pvh {
            note.extend_from_slice(&4u32.to_le_bytes()); // namesz "Xen\0"
            note.extend_from_slice(&4u32.to_le_bytes()); // descsz
            note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&(paddr as u32).to_le_bytes());
        }
        let data_off = note_off + note.len() as u64;

        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF");
        f.extend_from_slice(&[2, 1, 1, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&paddr.to_le_bytes()); // e_entry
        f.extend_from_slice(&ehsize.to_le_bytes()); // e_phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(ehsize as u16).to_le_bytes());
        f.extend_from_slice(&(phentsize as u16).to_le_bytes());
        f.extend_from_slice(&phnum.to_le_bytes());
        f.extend_from_slice(&[0; 6]);
        assert_eq!(f.len(), 64);
        let mut phdr = |kind: u32, off: u64, addr: u64, size: u64| {
            f.extend_from_slice(&kind.to_le_bytes());
            f.extend_from_slice(&5u32.to_le_bytes());
            f.extend_from_slice(&off.to_le_bytes());
            f.extend_from_slice(&addr.to_le_bytes()); // vaddr
            f.extend_from_slice(&addr.to_le_bytes()); // paddr
            f.extend_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&size.to_le_bytes());
            f.extend_from_slice(&4u64.to_le_bytes());
        };
        phdr(1, data_off, paddr, payload.len() as u64);
        if pvh {
            phdr(4, note_off, 0, note.len() as u64);
        }
        f.extend_from_slice(&note);
        f.extend_from_slice(payload);
        f
    }

    /// A minimal bzImage: 4 setup sectors, a setup header, then `payload` as the
    /// protected-mode kernel.
    pub(crate) fn make_bzimage(payload: &[u8], xloadflags: u16) -> Vec<u8> {
        let setup_sects = 4u8;
        let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        f[0x1f1] = setup_sects;
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(HDRS_MAGIC);
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
        f[0x211] = 0x01; // loadflags: LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        f[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
        f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
        f[0x234] = 1; // relocatable
        f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        f[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes()); // init_size
        f.extend_from_slice(payload);
        f
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn formats_are_told_apart_by_content() {
        let p = Path::new("k");
        assert_eq!(
            detect_format(&make_elf(0x100_0000, b"x", true), p).unwrap(),
            KernelFormat::Elf
        );
        assert_eq!(
            detect_format(&make_bzimage(b"x", 1), p).unwrap(),
            KernelFormat::BzImage
        );
        let e = detect_format(b"#!/bin/sh\necho not a kernel\n", p).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither an ELF vmlinux nor a bzImage"),
            "{e}"
        );
        // Truncated before the HdrS magic.
        assert!(matches!(
            detect_format(&make_bzimage(b"", 1)[..0x203], p),
            Err(BootError::UnknownFormat { .. })
        ));
        let mut elf32 = make_elf(0x100_0000, b"x", true);
        elf32[4] = 1;
        assert!(matches!(
            detect_format(&elf32, p),
            Err(BootError::UnsupportedElf { .. })
        ));
    }

    #[test]
    fn vmlinux_with_pvh_note_enters_at_the_note() {
        let mem = mem();
        let f = write_tmp(&make_elf(0x100_0000, b"KERNEL", true));
        let k = load_kernel(&mem, f.path()).unwrap();
        assert_eq!(k.entry, GuestAddress(0x100_0000));
        assert!(k.setup_header.is_none());
        assert_eq!(k.end, 0x100_0000 + 6);
        let mut buf = [0u8; 6];
        vm_memory::Bytes::read_slice(&mem, &mut buf, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(&buf, b"KERNEL");
    }

    #[test]
    fn vmlinux_without_pvh_note_suggests_the_bzimage() {
        let f = write_tmp(&make_elf(0x100_0000, b"KERNEL", false));
        let e = load_kernel(&mem(), f.path()).unwrap_err();
        assert!(matches!(e, BootError::NoPvhNote { .. }));
        assert!(e.to_string().contains("bzImage"), "{e}");
    }

    #[test]
    fn bzimage_enters_at_code32_start_plus_0x200() {
        let mem = mem();
        let f = write_tmp(&make_bzimage(b"PMCODE", XLF_KERNEL_64));
        let k = load_kernel(&mem, f.path()).unwrap();
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        assert_eq!(k.end, 0x100_0000 + 0x80_0000, "decompression area counts");
        let mut buf = [0u8; 6];
        vm_memory::Bytes::read_slice(&mem, &mut buf, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&buf, b"PMCODE");
    }

    #[test]
    fn bzimage_without_64bit_entry_is_refused() {
        let f = write_tmp(&make_bzimage(b"PMCODE", 0));
        let e = load_kernel(&mem(), f.path()).unwrap_err();
        assert!(e.to_string().contains("64-bit"), "{e}");
    }

    #[test]
    fn kernel_larger_than_ram_is_a_clear_error() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let f = write_tmp(&make_elf(0x10_0000, &vec![0u8; 2 << 20], true));
        let e = load_kernel(&small, f.path()).unwrap_err();
        assert!(matches!(e, BootError::KernelTooBig { .. }), "{e:?}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = load_kernel(&mem(), Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    }
}
