//! Direct kernel boot: load `vmlinux` (PVH entry) or `bzImage` (64-bit boot protocol),
//! place the command line and initramfs, write the MP table, and set up vCPU state.
//!
//! OWNER: boot helper. The signatures below are the contract the VMM core builds against.

use std::path::Path;

use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

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

/// Errors from loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Placeholder until the loader lands.
    #[error("booting is not implemented yet")]
    NotImplemented,
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
}

/// Loads the kernel, initramfs, command line, MP table and boot parameters into `mem`.
pub fn load(_mem: &GuestMemoryMmap, _cfg: &BootConfig) -> Result<BootInfo, BootError> {
    Err(BootError::NotImplemented)
}

/// Sets CPUID, MSRs, FPU, LAPIC and registers of vCPU `id` for the entry described by `boot`.
pub fn setup_vcpu(
    _kvm: &Kvm,
    _vcpu: &VcpuFd,
    _id: u8,
    _vcpus: u8,
    _boot: &BootInfo,
    _mem: &GuestMemoryMmap,
) -> Result<(), BootError> {
    Err(BootError::NotImplemented)
}
