//! Architectural vCPU state at the kernel's entry point: general registers, segments and
//! control registers, MSRs, FPU and the local APIC's LINT pins.
//!
//! | state   | Linux64 (bzImage)                     | PVH (vmlinux)                    |
//! |---------|---------------------------------------|----------------------------------|
//! | mode    | long mode, paging on (identity 0–4G)  | 32-bit protected, paging off     |
//! | CR0     | PE ET PG                              | PE ET                            |
//! | CR4     | PAE                                   | 0                                |
//! | EFER    | LME LMA                               | 0                                |
//! | CS      | 0x10, 64-bit code                     | 0x28, 32-bit flat code           |
//! | DS..SS  | 0x18 flat data                        | 0x18 flat data                   |
//! | params  | RSI = boot_params                     | EBX = hvm_start_info             |
//! | RFLAGS  | 0x2 (IF clear)                        | 0x2                              |
//!
//! CR0.CD/NW, set by a vCPU reset, are cleared: the kernel rewrites CR0 soon, but until then
//! (and with non-coherent DMA, when KVM honours guest cacheability) a "cache disabled" CR0
//! makes no sense. IDT is empty (base 0, limit 0): interrupts are off and any exception
//! before the kernel installs its IDT should end as a triple fault the VMM reports.
//!
//! MSRs: `IA32_MISC_ENABLE.FAST_STRINGS` (rep movs/stos fast path, set by every BIOS);
//! `MTRRdefType` = enabled, write-back, so all RAM is WB by MTRR, which matters once a device
//! with non-coherent DMA makes KVM respect guest memory types; the SYSENTER/SYSCALL MSRs
//! are written as zero, their reset value, so the state is the same when a vCPU is set up
//! again (as Firecracker and cloud-hypervisor do).
//!
//! LAPIC: LINT0 = ExtINT (the 8259 output reaches the CPU through it, for the timer during
//! early boot and for `noapic`), LINT1 = NMI, matching the MP table's local interrupt entries.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use super::gdt;
use super::layout::{BOOT_STACK_POINTER, GDT_START};
use super::{BootError, BootInfo, BootProtocol};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRINGS: u64 = 1 << 0;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WB: u64 = 6;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0b100;
const APIC_MODE_EXTINT: u32 = 0b111;

/// The boot MSRs, in the order they are written.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRINGS),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Writes [`boot_msrs`]; KVM stops at the first MSR it refuses, which is named in the error.
pub fn setup_msrs(vcpu: &VcpuFd, id: u8) -> Result<(), BootError> {
    let entries = boot_msrs();
    // Ten entries are far below KVM_MAX_MSR_ENTRIES, so the list always builds.
    let msrs = Msrs::from_entries(&entries).map_err(|_| BootError::MsrRefused {
        id,
        index: entries[0].index,
    })?;
    let written = vcpu.set_msrs(&msrs).map_err(|source| BootError::Vcpu {
        id,
        what: "set MSRs",
        source,
    })?;
    if written != entries.len() {
        let index = entries.get(written).map_or(0, |e| e.index);
        return Err(BootError::MsrRefused { id, index });
    }
    Ok(())
}

/// General-purpose registers at the entry point.
pub fn boot_regs(boot: &BootInfo) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: boot.entry.0,
        ..Default::default()
    };
    match boot.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot.params.0;
        }
        BootProtocol::Pvh => {
            regs.rbx = boot.params.0;
        }
    }
    regs
}

/// Segment and control registers at the entry point, on top of KVM's reset state `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: BootProtocol, cr3: u64) -> kvm_sregs {
    let code = match protocol {
        BootProtocol::Linux64 => gdt::CODE64_SELECTOR,
        BootProtocol::Pvh => gdt::CODE32_SELECTOR,
    };
    let data = gdt::segment(gdt::DATA_SELECTOR);
    sregs.cs = gdt::segment(code);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(gdt::TSS_SELECTOR);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt::table()) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// x87 control word and MXCSR as after `FNINIT` / reset: all exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in the vCPU's in-kernel LAPIC.
pub fn setup_lapic(vcpu: &VcpuFd, id: u8) -> Result<(), BootError> {
    let mut lapic = vcpu.get_lapic().map_err(|source| BootError::Vcpu {
        id,
        what: "read the local APIC (is the in-kernel irqchip created before the vCPUs?)",
        source,
    })?;
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = lapic_read(&lapic.regs, reg);
        lapic_write(&mut lapic.regs, reg, (value & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(|source| BootError::Vcpu {
        id,
        what: "set the local APIC",
        source,
    })
}

/// Reads a 32-bit LAPIC register from a `kvm_lapic_state` page.
pub fn lapic_read(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (dst, src) in b.iter_mut().zip(&regs[offset..offset + 4]) {
        *dst = *src as u8;
    }
    u32::from_le_bytes(b)
}

fn lapic_write(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (dst, src) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *dst = src as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn linux64_registers_follow_the_boot_protocol() {
        let boot = BootInfo {
            entry: GuestAddress(0x100200),
            protocol: BootProtocol::Linux64,
            params: GuestAddress(0x7000),
        };
        let r = boot_regs(&boot);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100200, 0x7000, 2));
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64, 0x9000);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.ss.selector, 0x18);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.gdt.limit, 47);
    }

    #[test]
    fn pvh_registers_follow_the_pvh_abi() {
        let boot = BootInfo {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Pvh,
            params: GuestAddress(0x6000),
        };
        assert_eq!(boot_regs(&boot).rbx, 0x6000);
        let s = boot_sregs(kvm_sregs::default(), BootProtocol::Pvh, 0);
        assert_eq!((s.cs.db, s.cs.l, s.cs.limit), (1, 0, 0xffff_ffff));
        assert_eq!(s.cr0 & (CR0_PG | CR0_PE), CR0_PE);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!((s.tr.type_, s.tr.limit), (0xb, 0x67));
    }

    #[test]
    fn lapic_register_helpers_roundtrip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        lapic_write(&mut regs, APIC_LVT_LINT0, 0x0001_0700);
        assert_eq!(lapic_read(&regs, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_read(&regs, APIC_LVT_LINT1), 0);
    }
}
