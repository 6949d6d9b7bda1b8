//! `--dry-run`: show what a command line would build, without touching KVM.
//!
//! The device lines come from the same `discovery::plan` a real start runs, so a dry run
//! refuses (exit 2, same message) exactly what a start would refuse. Unlike a start it
//! binds nothing: `managed=on` devices are reported, not switched to vfio-pci.

use std::process::ExitCode;

use devices::vfio::discovery::{self, Roots};

use crate::config::{SerialConfig, VmConfig};
use crate::exit::EXIT_USAGE;
use crate::memory::{AddrRange, MemoryLayout, E820_RAM};
use crate::seccomp::SeccompMode;

/// Prints the validated configuration and the plan; exit 0 when the plan is sound.
pub fn print_plan(cfg: &VmConfig) -> ExitCode {
    println!("kernel     {}", cfg.kernel.display());
    if let Some(i) = &cfg.initramfs {
        println!("initramfs  {}", i.display());
    }
    println!("cmdline    {}", cfg.cmdline);
    println!("vcpus      {}", cfg.vcpus);
    println!(
        "memory     {} MiB{}",
        cfg.memory.size >> 20,
        if cfg.memory.hugepages {
            " on hugepages"
        } else {
            ""
        }
    );
    let serial = match &cfg.serial {
        SerialConfig::Tty => "tty (stdout, input from stdin)".to_string(),
        SerialConfig::File(p) => format!("file {}", p.display()),
        SerialConfig::Null => "null (output discarded)".into(),
        SerialConfig::Off => "off".into(),
    };
    println!("serial     {serial}");
    println!(
        "seccomp    {}",
        match cfg.seccomp {
            SeccompMode::On => "on (a filter per thread; a denied call stops passvm)",
            SeccompMode::Log => "log (a filter per thread; the kernel logs a denied call)",
            SeccompMode::Off => "off",
        }
    );
    println!("vfio       backend {:?}", cfg.vfio_backend);
    if cfg.devices.is_empty() {
        println!("device     none");
    } else {
        match discovery::plan(
            &cfg.devices,
            cfg.vfio_backend,
            cfg.iommufd_fd,
            cfg.memory.size,
            &Roots::host(),
        ) {
            Ok(plan) => print!("{plan}"),
            Err(e) => {
                eprintln!("passvm: {e}");
                return ExitCode::from(e.exit_code());
            }
        }
    }
    // No device is opened here, so only the CPU bounds the map; an IOMMU may lower it.
    let limit = crate::memory::phys_limit(cpu_phys_bits(), None);
    match MemoryLayout::with_limit(cfg.memory.size, limit) {
        Ok(layout) => print_layout(&layout),
        Err(e) => {
            eprintln!("passvm: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    ExitCode::SUCCESS
}

/// This CPU's physical address width (CPUID 0x80000008 EAX[7:0]), 36 bits when it does
/// not say.
fn cpu_phys_bits() -> u8 {
    // CPUID is safe to call on x86_64; leaf 0x80000000 says which extended leaves exist.
    let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    let leaf = std::arch::x86_64::__cpuid(0x8000_0008);
    if max < 0x8000_0008 {
        return 36;
    }
    ((leaf.eax & 0xff) as u8).max(36)
}

fn print_layout(layout: &MemoryLayout) {
    let range = |r: &AddrRange| format!("{:#013x}-{:#013x}", r.start, r.end() - 1);
    for r in &layout.ram {
        println!("ram        {} ({} MiB)", range(r), r.size >> 20);
    }
    println!("mmio32     {} (32-bit BARs)", range(&layout.mmio32));
    println!("mmio64     {} (64-bit BARs)", range(&layout.mmio64));
    for e in crate::memory::e820_from_ram(layout.ram.iter().copied()) {
        let kind = if e.kind == E820_RAM {
            "ram"
        } else {
            "reserved"
        };
        println!(
            "e820       {:#013x}-{:#013x} {kind}",
            e.addr,
            e.addr + e.size - 1
        );
    }
}
