//! Direct kernel boot: load `vmlinux` (PVH entry) or `bzImage` (64-bit boot protocol),
//! place the command line and initramfs, write the MP table, and set up vCPU state.
//!
//! There is no firmware and no real mode: the vCPUs start at the kernel's 32-bit PVH entry
//! (protected mode, paging off) or its 64-bit entry (long mode on identity page tables).
//! Real mode is slow to emulate and hangs in the nested test bed; a direct entry is also
//! the fastest way into the kernel.
//!
//! # Order of work
//!
//! 1. [`load`] (once per VM, after guest memory exists, before the vCPUs run):
//!    - detect the image format from its bytes and load it with linux-loader
//!      ([`loader`]);
//!    - write the command line at [`layout::CMDLINE_START`] (printable ASCII, length
//!      checked against the kernel's limit);
//!    - put the initramfs at the top of the RAM below the 32-bit hole, page aligned, under
//!      the bzImage's `initrd_addr_max` and above the kernel and its decompression area;
//!    - write the protocol's parameter block: `boot_params` ([`bzimage`]) or
//!      `hvm_start_info` with the e820 memory map and the initramfs module ([`pvh`]);
//!    - write the GDT ([`gdt`]), the identity page tables for the 64-bit entry
//!      ([`paging`]) and the MP table ([`mptable`]).
//! 2. [`setup_vcpu`] (for every vCPU, after `KVM_CREATE_IRQCHIP`, before `KVM_RUN`): CPUID
//!    ([`cpuid`]), MSRs, segment/control registers, general registers, FPU and the LAPIC's
//!    LINT pins ([`regs`]). Only vCPU 0 starts at the entry point; KVM keeps the others in
//!    wait-for-SIPI until the guest's SMP bring-up starts them, at which point INIT/SIPI
//!    reset their registers, but CPUID, MSRs and LAPIC set here stay.
//! 3. Optionally [`mptable::write`] again, before the vCPUs run, to add the PCI INTx lines
//!    of devices created after `load` ([`mptable::PciIntx::new`] from the device's slot,
//!    `Interrupt Pin` register and GSI); it rewrites the whole table in place.
//!
//! Memory layout of all of this: [`layout`] and [`crate::memory`].

pub mod bzimage;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod pvh;
pub mod regs;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::memory;
use layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, GDT_START, PML4_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};

/// How the guest kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = start_info address.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped page tables, `%rsi` = boot_params.
    Linux64,
}

/// Where and how a loaded kernel starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Entry point (guest physical).
    pub entry: GuestAddress,
    /// Entry protocol.
    pub protocol: BootProtocol,
    /// `start_info` (PVH) or `boot_params` (Linux64) address.
    pub params: GuestAddress,
}

/// Errors from loading a kernel or setting up a vCPU. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be read.
    #[error("cannot read kernel {}: {source}; check the --kernel path", path.display())]
    KernelIo {
        /// The --kernel path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("{} is neither an ELF vmlinux nor a bzImage; give --kernel the uncompressed vmlinux (built with CONFIG_PVH=y) or arch/x86/boot/bzImage", path.display())]
    UnknownFormat {
        /// The --kernel path.
        path: PathBuf,
    },
    /// An ELF file that is not a 64-bit x86 executable.
    #[error("{} is an ELF file but not a 64-bit x86 one; passvm boots x86-64 Linux kernels", path.display())]
    UnsupportedElf {
        /// The --kernel path.
        path: PathBuf,
    },
    /// A vmlinux without the PVH entry note.
    #[error("{} is an ELF vmlinux without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); rebuild it with CONFIG_PVH=y, or boot the kernel's bzImage (arch/x86/boot/bzImage) instead", path.display())]
    NoPvhNote {
        /// The --kernel path.
        path: PathBuf,
    },
    /// linux-loader rejected the ELF image.
    #[error("cannot load ELF kernel {}: {reason}; is it a complete vmlinux?", path.display())]
    BadElf {
        /// The --kernel path.
        path: PathBuf,
        /// What linux-loader said.
        reason: String,
    },
    /// linux-loader rejected the bzImage, or it cannot be booted without real mode.
    #[error("cannot boot bzImage {}: {reason}", path.display())]
    BadBzImage {
        /// The --kernel path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kernel does not fit in guest RAM.
    #[error("kernel {} cannot be copied into guest RAM: it does not fit in the guest's {low_ram_mib} MiB below the PCI hole, or the file is truncated; give the VM more memory (--memory size=512M) or check the file", path.display())]
    KernelTooBig {
        /// The --kernel path.
        path: PathBuf,
        /// RAM below the 32-bit hole, in MiB.
        low_ram_mib: u64,
    },
    /// The initramfs file cannot be read.
    #[error("cannot read initramfs {}: {source}; check the --initramfs path", path.display())]
    InitramfsIo {
        /// The --initramfs path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The initramfs file is empty.
    #[error("initramfs {} is empty; give --initramfs a cpio archive (optionally compressed)", path.display())]
    InitramfsEmpty {
        /// The --initramfs path.
        path: PathBuf,
    },
    /// The initramfs does not fit between the kernel and the top of low RAM.
    #[error("initramfs {} ({size_mib} MiB) does not fit in guest RAM between the kernel (ends at {kernel_end_mib} MiB) and {top_mib} MiB; give the VM more memory (--memory size=...)", path.display())]
    InitramfsTooBig {
        /// The --initramfs path.
        path: PathBuf,
        /// Its size in MiB (rounded up).
        size_mib: u64,
        /// Where the kernel (or its decompression area) ends.
        kernel_end_mib: u64,
        /// Highest usable address for it.
        top_mib: u64,
    },
    /// The command line is longer than the kernel accepts.
    #[error("the kernel command line is {len} bytes, but this kernel accepts at most {max}; shorten --cmdline")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The command line contains a byte the kernel cannot take.
    #[error("the kernel command line contains {what} at byte {pos}; use printable ASCII only in --cmdline")]
    CmdlineInvalid {
        /// Description of the offending character.
        what: String,
        /// Byte offset.
        pos: usize,
    },
    /// More e820 entries than the zero page holds (cannot happen with passvm's layout).
    #[error("the memory map has {0} entries, more than the 128 boot_params can carry")]
    TooManyE820Entries(usize),
    /// MP table problem.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// A write into guest memory failed.
    #[error("cannot write the {what} into guest memory: {source}")]
    GuestMemory {
        /// Which structure.
        what: &'static str,
        /// The vm-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// linux-loader's boot configurator failed.
    #[error("cannot write the {what} into guest memory: {reason}")]
    Configurator {
        /// Which structure.
        what: &'static str,
        /// The configurator's error.
        reason: String,
    },
    /// The vCPU count is not usable.
    #[error("vCPU {id} of {vcpus} is out of range; use --cpus boot=1..={max}", max = mptable::MAX_VCPUS)]
    VcpuId {
        /// vCPU index.
        id: u8,
        /// vCPU count.
        vcpus: u8,
    },
    /// A KVM vCPU ioctl failed.
    #[error("cannot {what} of vCPU {id}: {source}")]
    Vcpu {
        /// vCPU index.
        id: u8,
        /// What was being done.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The filtered CPUID table does not fit KVM's limit (cannot happen with KVM's tables).
    #[error("cannot build the CPUID table of vCPU {id}: {reason}")]
    CpuidTable {
        /// vCPU index.
        id: u8,
        /// The FAM wrapper's complaint.
        reason: String,
    },
    /// KVM refused one of the boot MSRs.
    #[error("KVM refused to set MSR {index:#x} on vCPU {id}; the host KVM lacks a feature passvm's boot state needs (nested KVM too old?)")]
    MsrRefused {
        /// vCPU index.
        id: u8,
        /// The MSR.
        index: u32,
    },
    /// The entry point is not in guest RAM (load() was not called on this memory).
    #[error("the kernel entry point {0:#x} is not in guest RAM; boot::load must run on the same guest memory before setup_vcpu")]
    EntryOutsideRam(u64),
}

/// What the loader needs to know about the VM.
#[derive(Debug, Clone)]
pub struct BootConfig<'a> {
    /// Guest kernel image (ELF vmlinux or bzImage).
    pub kernel: &'a Path,
    /// Optional initramfs.
    pub initramfs: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Number of vCPUs (MP table entries).
    pub vcpus: u8,
    /// The ACPI RSDP's guest address, when the VMM wrote ACPI tables.
    pub rsdp: Option<u64>,
}

/// Loads the kernel, initramfs, command line, MP table and boot parameters into `mem`.
pub fn load(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<BootInfo, BootError> {
    let started = std::time::Instant::now();
    if cfg.vcpus == 0 || cfg.vcpus > mptable::MAX_VCPUS {
        return Err(BootError::VcpuId {
            id: 0,
            vcpus: cfg.vcpus,
        });
    }
    let kernel = loader::load_kernel(mem, cfg.kernel)?;

    let max_cmdline = match &kernel.setup_header {
        Some(hdr) => bzimage::max_cmdline_len(hdr).min(CMDLINE_MAX_SIZE - 1),
        None => CMDLINE_MAX_SIZE - 1,
    };
    write_cmdline(mem, cfg.cmdline, max_cmdline)?;

    let initrd_top = match &kernel.setup_header {
        Some(hdr) => bzimage::initrd_addr_max(hdr).saturating_add(1),
        None => u64::MAX,
    };
    let initramfs = match cfg.initramfs {
        Some(path) => Some(load_initramfs(mem, path, kernel.end, initrd_top)?),
        None => None,
    };

    let e820 = memory::e820_map(mem);
    let (protocol, params) = match kernel.setup_header {
        Some(hdr) => {
            let zp = bzimage::build(
                hdr,
                &bzimage::ZeroPage {
                    cmdline_addr: CMDLINE_START,
                    initramfs,
                    e820: &e820,
                    rsdp: cfg.rsdp,
                },
            )?;
            let bp = BootParams::new(&zp, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(|e| {
                BootError::Configurator {
                    what: "boot_params",
                    reason: e.to_string(),
                }
            })?;
            (BootProtocol::Linux64, ZERO_PAGE_START)
        }
        None => {
            let (info, memmap, modules) = pvh::build(&pvh::StartInfoInputs {
                cmdline_addr: CMDLINE_START,
                initramfs,
                modlist_addr: PVH_MODLIST_START,
                memmap_addr: PVH_MEMMAP_START,
                e820: &e820,
                rsdp: cfg.rsdp,
            });
            let mut bp = BootParams::new(&info, GuestAddress(PVH_INFO_START));
            bp.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if !modules.is_empty() {
                bp.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams(&bp, mem).map_err(|e| {
                BootError::Configurator {
                    what: "PVH start_info",
                    reason: e.to_string(),
                }
            })?;
            (BootProtocol::Pvh, PVH_INFO_START)
        }
    };

    mem.write_obj(gdt::table(), GuestAddress(GDT_START))
        .map_err(|source| BootError::GuestMemory {
            what: "GDT",
            source,
        })?;
    if protocol == BootProtocol::Linux64 {
        paging::write_identity_map(mem).map_err(|source| BootError::GuestMemory {
            what: "boot page tables",
            source,
        })?;
    }
    mptable::write(mem, cfg.vcpus, &[])?;

    log::info!(
        "kernel {} loaded in {:?}: {:?} entry {:#x}, params at {params:#x}, initramfs {:x?}",
        cfg.kernel.display(),
        started.elapsed(),
        protocol,
        kernel.entry.0,
        initramfs
    );
    Ok(BootInfo {
        entry: kernel.entry,
        protocol,
        params: GuestAddress(params),
    })
}

/// Validates and writes the NUL-terminated command line at [`CMDLINE_START`].
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), BootError> {
    if let Some((pos, c)) = cmdline
        .char_indices()
        .find(|(_, c)| !matches!(c, ' '..='~'))
    {
        return Err(BootError::CmdlineInvalid {
            what: format!("{c:?}"),
            pos,
        });
    }
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::GuestMemory {
            what: "kernel command line",
            source,
        })
}

/// Reads the initramfs to the highest page-aligned address below `min(low RAM end, top)`
/// that stays above `kernel_end`; returns (address, size).
fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    top: u64,
) -> Result<(u64, u64), BootError> {
    let io_err = |source| BootError::InitramfsIo {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size == 0 {
        return Err(BootError::InitramfsEmpty {
            path: path.to_path_buf(),
        });
    }
    let top = memory::low_ram_end(mem).min(top);
    let floor = kernel_end.div_ceil(devices::size::PAGE_SIZE) * devices::size::PAGE_SIZE;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !(devices::size::PAGE_SIZE - 1))
        .filter(|&a| a >= floor)
        .ok_or(BootError::InitramfsTooBig {
            path: path.to_path_buf(),
            size_mib: size.div_ceil(1 << 20),
            kernel_end_mib: floor >> 20,
            top_mib: top >> 20,
        })?;
    let len = usize::try_from(size).map_err(|_| BootError::InitramfsTooBig {
        path: path.to_path_buf(),
        size_mib: size.div_ceil(1 << 20),
        kernel_end_mib: floor >> 20,
        top_mib: top >> 20,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| BootError::GuestMemory {
            what: "initramfs",
            source,
        })?;
    Ok((addr, size))
}

/// Sets CPUID, MSRs, FPU, LAPIC and registers of vCPU `id` for the entry described by `boot`.
///
/// Needs the in-kernel irqchip (for the LAPIC) and must run before the vCPU's first `KVM_RUN`.
pub fn setup_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    vcpus: u8,
    boot: &BootInfo,
    mem: &GuestMemoryMmap,
) -> Result<(), BootError> {
    if id >= vcpus || vcpus > mptable::MAX_VCPUS {
        return Err(BootError::VcpuId { id, vcpus });
    }
    if !mem.address_in_range(boot.entry) {
        return Err(BootError::EntryOutsideRam(boot.entry.0));
    }
    let vcpu_err = |what| move |source| BootError::Vcpu { id, what, source };

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(vcpu_err("read KVM's supported CPUID for"))?;
    let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
    let cpuid =
        cpuid::filter(&supported, id, vcpus, tsc_deadline).map_err(|e| BootError::CpuidTable {
            id,
            reason: format!("{e:?}"),
        })?;
    vcpu.set_cpuid2(&cpuid).map_err(vcpu_err("set CPUID"))?;

    regs::setup_msrs(vcpu, id)?;

    let sregs = vcpu
        .get_sregs()
        .map_err(vcpu_err("read segment registers"))?;
    vcpu.set_sregs(&regs::boot_sregs(sregs, boot.protocol, PML4_START))
        .map_err(vcpu_err("set segment and control registers"))?;
    vcpu.set_regs(&regs::boot_regs(boot))
        .map_err(vcpu_err("set general registers"))?;
    vcpu.set_fpu(&regs::boot_fpu())
        .map_err(vcpu_err("set FPU state"))?;
    regs::setup_lapic(vcpu, id)?;
    Ok(())
}

#[cfg(test)]
mod tests;
