//! End-to-end tests of `load` (crafted images, real guest memory) and of `setup_vcpu` on
//! this machine's /dev/kvm.

use std::io::Write;

use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

use super::loader::tests::{make_bzimage, make_elf};
use super::*;
use crate::memory::{create_guest_memory, MemoryLayout, MMIO32_START};

const MIB: u64 = 1 << 20;

fn tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn read_cmdline(mem: &GuestMemoryMmap, addr: u64) -> String {
    let mut buf = vec![0u8; CMDLINE_MAX_SIZE];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    let end = buf.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(buf[..end].to_vec()).unwrap()
}

#[test]
fn bzimage_boot_fills_boot_params() {
    let mem = create_guest_memory(256 * MIB, false).unwrap();
    let kernel = tmp(&make_bzimage(b"PMCODE", loader::XLF_KERNEL_64));
    let initrd = tmp(&vec![0x5a; 3 * 4096 + 17]);
    let cfg = BootConfig {
        kernel: kernel.path(),
        initramfs: Some(initrd.path()),
        cmdline: "console=ttyS0 panic=-1",
        vcpus: 2,
        rsdp: None,
    };
    let boot = load(&mem, &cfg).unwrap();
    assert_eq!(boot.protocol, BootProtocol::Linux64);
    assert_eq!(boot.entry, GuestAddress(0x10_0200));
    assert_eq!(boot.params, GuestAddress(ZERO_PAGE_START));

    let bp: boot_params = mem.read_obj(boot.params).unwrap();
    let hdr = bp.hdr;
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.cmd_line_ptr } as u64, CMDLINE_START);
    assert_eq!(
        read_cmdline(&mem, { hdr.cmd_line_ptr } as u64),
        "console=ttyS0 panic=-1"
    );
    let (rd, rd_size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
    assert_eq!(rd_size, 3 * 4096 + 17);
    assert_eq!(rd % 4096, 0, "page aligned");
    assert!(rd + rd_size <= 256 * MIB, "inside RAM");
    assert!(rd + rd_size > 256 * MIB - 8192, "placed high");
    let mut first = [0u8; 4];
    mem.read_slice(&mut first, GuestAddress(rd)).unwrap();
    assert_eq!(first, [0x5a; 4]);

    let e820 = memory::e820_map(&mem);
    assert_eq!(usize::from(bp.e820_entries), e820.len());
    let t0 = bp.e820_table[0];
    assert_eq!(({ t0.addr }, { t0.size }), (0, memory::EBDA_START));

    // Identity map and GDT are in place for the 64-bit entry.
    let pml4e: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
    assert_eq!(pml4e & !0xfff, layout::PDPTE_START);
    let code: u64 = mem
        .read_obj(GuestAddress(GDT_START + u64::from(gdt::CODE64_SELECTOR)))
        .unwrap();
    assert_eq!(code, gdt::table()[2]);
    // MP table for 2 vCPUs.
    let mut sig = [0u8; 4];
    mem.read_slice(&mut sig, GuestAddress(layout::MPTABLE_START))
        .unwrap();
    assert_eq!(&sig, b"_MP_");
}

#[test]
fn bzimage_initramfs_respects_initrd_addr_max() {
    // 2 GiB of RAM, but this kernel only takes initrds up to 0x37ffffff.
    let mem = create_guest_memory(2 << 30, false).unwrap();
    let kernel = tmp(&make_bzimage(b"PMCODE", loader::XLF_KERNEL_64));
    let initrd = tmp(&[1u8; 5000]);
    let cfg = BootConfig {
        kernel: kernel.path(),
        initramfs: Some(initrd.path()),
        cmdline: "x",
        vcpus: 1,
        rsdp: None,
    };
    let boot = load(&mem, &cfg).unwrap();
    let bp: boot_params = mem.read_obj(boot.params).unwrap();
    let rd = { bp.hdr.ramdisk_image } as u64;
    assert!(rd + 5000 <= 0x3800_0000, "{rd:#x}");
    assert!(rd >= 0x3800_0000 - 3 * 4096, "{rd:#x}");
}

#[test]
fn pvh_boot_fills_start_info() {
    let mem = create_guest_memory(4 << 30, false).unwrap();
    let kernel = tmp(&make_elf(0x100_0000, b"KERNEL", true));
    let initrd = tmp(&[7u8; 10_000]);
    let cfg = BootConfig {
        kernel: kernel.path(),
        initramfs: Some(initrd.path()),
        cmdline: "console=ttyS0",
        vcpus: 1,
        rsdp: None,
    };
    let boot = load(&mem, &cfg).unwrap();
    assert_eq!(boot.protocol, BootProtocol::Pvh);
    assert_eq!(boot.entry, GuestAddress(0x100_0000));
    assert_eq!(boot.params, GuestAddress(PVH_INFO_START));

    let info: hvm_start_info = mem.read_obj(boot.params).unwrap();
    assert_eq!(info.magic, pvh::XEN_HVM_START_MAGIC_VALUE);
    assert_eq!(info.version, 1);
    assert_eq!(read_cmdline(&mem, info.cmdline_paddr), "console=ttyS0");
    assert_eq!(info.nr_modules, 1);
    let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!(module.size, 10_000);
    assert!(module.paddr + module.size <= MMIO32_START, "below the hole");
    assert!(module.paddr >= MMIO32_START - 16 * 4096, "placed high");

    let expected =
        crate::memory::e820_from_ram(MemoryLayout::new(4 << 30).unwrap().ram.into_iter());
    assert_eq!(info.memmap_entries as usize, expected.len());
    for (i, e) in expected.iter().enumerate() {
        let m: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(
                info.memmap_paddr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64,
            ))
            .unwrap();
        assert_eq!((m.addr, m.size, m.type_), (e.addr, e.size, e.kind));
    }
    // The start info and memmap must not overlap each other.
    assert!(PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64 <= PVH_MODLIST_START);
}

#[test]
fn command_line_is_checked() {
    let mem = create_guest_memory(64 * MIB, false).unwrap();
    let kernel = tmp(&make_elf(0x100_0000, b"K", true));
    let long = "a".repeat(CMDLINE_MAX_SIZE);
    let cfg = BootConfig {
        kernel: kernel.path(),
        initramfs: None,
        cmdline: &long,
        vcpus: 1,
        rsdp: None,
    };
    let e = load(&mem, &cfg).unwrap_err();
    assert!(matches!(e, BootError::CmdlineTooLong { .. }), "{e:?}");
    assert!(e.to_string().contains("--cmdline"));
    let cfg = BootConfig {
        cmdline: "console=ttyS0\nroot=/dev/vda",
        ..cfg
    };
    assert!(matches!(
        load(&mem, &cfg),
        Err(BootError::CmdlineInvalid { pos: 13, .. })
    ));
}

#[test]
fn initramfs_too_big_for_ram_is_refused() {
    let mem = create_guest_memory(32 * MIB, false).unwrap();
    let kernel = tmp(&make_elf(0x100_0000, &vec![0u8; 4 << 20], true));
    let initrd = tmp(&vec![0u8; 16 << 20]);
    let cfg = BootConfig {
        kernel: kernel.path(),
        initramfs: Some(initrd.path()),
        cmdline: "",
        vcpus: 1,
        rsdp: None,
    };
    let e = load(&mem, &cfg).unwrap_err();
    assert!(matches!(e, BootError::InitramfsTooBig { .. }), "{e:?}");
    assert!(e.to_string().contains("more memory"));
}

#[test]
fn garbage_kernel_is_a_clear_error() {
    let mem = create_guest_memory(64 * MIB, false).unwrap();
    let kernel = tmp(b"this is not a kernel");
    let cfg = BootConfig {
        kernel: kernel.path(),
        initramfs: None,
        cmdline: "",
        vcpus: 1,
        rsdp: None,
    };
    let e = load(&mem, &cfg).unwrap_err();
    assert!(e
        .to_string()
        .contains("neither an ELF vmlinux nor a bzImage"));
}

/// Creates a VM with an irqchip and guest memory registered, as the VMM does.
fn kvm_vm(mem: &GuestMemoryMmap) -> (kvm_ioctls::Kvm, kvm_ioctls::VmFd) {
    use vm_memory::GuestMemoryRegion;
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm (present when built)");
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region stays mapped for as long as the VM lives in this test.
        unsafe { vm.set_user_memory_region(r) }.unwrap();
    }
    (kvm, vm)
}

fn read_msr(vcpu: &VcpuFd, index: u32) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
    msrs.as_slice()[0].data
}

#[test]
#[cfg_attr(
    passvm_no_kvm,
    ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
)]
fn setup_vcpu_on_real_kvm_for_both_protocols() {
    let images = [
        (
            make_bzimage(b"PMCODE", loader::XLF_KERNEL_64),
            BootProtocol::Linux64,
        ),
        (make_elf(0x100_0000, b"KERNEL", true), BootProtocol::Pvh),
    ];
    for (image, protocol) in images {
        let mem = create_guest_memory(128 * MIB, false).unwrap();
        let (kvm, vm) = kvm_vm(&mem);
        let kernel = tmp(&image);
        let boot = load(
            &mem,
            &BootConfig {
                kernel: kernel.path(),
                initramfs: None,
                cmdline: "console=ttyS0",
                vcpus: 2,
                rsdp: None,
            },
        )
        .unwrap();
        assert_eq!(boot.protocol, protocol);
        for id in 0..2u8 {
            let vcpu = vm.create_vcpu(u64::from(id)).unwrap();
            setup_vcpu(&kvm, &vcpu, id, 2, &boot, &mem).unwrap();

            let regs = vcpu.get_regs().unwrap();
            let sregs = vcpu.get_sregs().unwrap();
            assert_eq!(regs.rip, boot.entry.0);
            match protocol {
                BootProtocol::Linux64 => {
                    assert_eq!(regs.rsi, ZERO_PAGE_START);
                    assert_eq!(sregs.cs.selector, gdt::CODE64_SELECTOR);
                    assert_eq!(sregs.cs.l, 1);
                    assert_eq!(sregs.cr3, PML4_START);
                    assert_ne!(sregs.efer & (1 << 10), 0, "EFER.LMA");
                    assert_ne!(sregs.cr0 & (1 << 31), 0, "CR0.PG");
                }
                BootProtocol::Pvh => {
                    assert_eq!(regs.rbx, PVH_INFO_START);
                    assert_eq!(sregs.cs.selector, gdt::CODE32_SELECTOR);
                    assert_eq!(sregs.cs.db, 1);
                    assert_eq!(sregs.cr0 & (1 << 31), 0, "paging off");
                    assert_eq!(sregs.cr0 & 1, 1, "protected mode");
                    assert_eq!(sregs.efer & (1 << 10), 0);
                }
            }
            assert_eq!(sregs.gdt.base, GDT_START);

            assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
            // MXCSR read through the XSAVE image (dword 6 of the legacy area): this host's
            // KVM_GET_FPU reports 0 for it even right after KVM_SET_FPU stored 0x1f80.
            assert_eq!(vcpu.get_xsave().unwrap().region[6], 0x1f80);

            let lapic = vcpu.get_lapic().unwrap();
            assert_eq!(
                (regs::lapic_read(&lapic.regs, 0x350) >> 8) & 7,
                0b111,
                "LINT0 ExtINT"
            );
            assert_eq!(
                (regs::lapic_read(&lapic.regs, 0x360) >> 8) & 7,
                0b100,
                "LINT1 NMI"
            );
            // KVM gives vCPU n APIC id n; the CPUID we set must agree with it.
            assert_eq!(regs::lapic_read(&lapic.regs, 0x20) >> 24, u32::from(id));

            let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let leaf1 = cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == 1)
                .copied()
                .unwrap();
            assert_eq!(leaf1.ebx >> 24, u32::from(id));
            assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
            let core_level = cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == 0xb && e.index == 1)
                .copied()
                .unwrap();
            assert_eq!(
                (core_level.ebx, core_level.edx),
                (2, u32::from(id)),
                "2 cores, x2APIC id"
            );

            assert_eq!(read_msr(&vcpu, 0x1a0) & 1, 1, "fast strings");
            assert_eq!(
                read_msr(&vcpu, 0x2ff),
                (1 << 11) | 6,
                "MTRRs on, WB default"
            );
        }
    }
}
