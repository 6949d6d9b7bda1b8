//! The guest's ACPI tables: how it learns its CPUs, interrupt controllers, PCI host bridge,
//! serial port and power controls, instead of probing for a 1990s PC.
//!
//! ```text
//! 0xe0000  RSDP   → XSDT
//!          XSDT   → FADT, MADT, MCFG
//!          FADT   hardware-reduced; DSDT; sleep control/status and reset registers
//!                 (devices::power); no i8042, no VGA, no CMOS RTC flag games
//!          MADT   one local APIC per vCPU, the IOAPIC (GSI 0-23)
//!          MCFG   the ECAM window of segment 0 (devices::pci::ecam)
//!          DSDT   \_S5, \_SB.PCI0 (windows, _PRT, _OSC), \_SB.MBRD, \_SB.COM1 (dsdt.rs)
//! 0x100000 end of the BIOS area
//! ```
//!
//! **Why hardware-reduced ACPI** (FADT flag `HW_REDUCED_ACPI`) and not a PM1 block: the
//! fixed hardware a PM1 block implies (PM timer, PM1 event/control, GPE blocks, an SCI)
//! would be emulated only to be polled; the reduced profile needs three byte registers for
//! power-off and reset and nothing that interrupts. Linux supports it on x86 (Cloud
//! Hypervisor and Firecracker guests use it); the guest then uses no 8259 PIC and no PIT,
//! which it does not need: its clock is kvm-clock, its timer the TSC-deadline LAPIC timer,
//! its interrupts go through the IOAPIC and MSIs.
//!
//! **What the FADT leaves out on purpose**: `IAPC_BOOT_ARCH` has no `8042` bit, so Linux
//! does not probe a keyboard controller (3.3 s of L2 boot in the bed before this table
//! existed), and no `VGA` bit. The i8042 at 0x60/0x64 still answers for guests that use
//! `reboot=k`.
//!
//! The tables sit in the e820-reserved BIOS area below 1 MiB, where Linux also finds the
//! RSDP by its scan; the boot protocols pass its address explicitly as well
//! (`boot_params.acpi_rsdp_addr`, PVH `rsdp_paddr`). The MP table stays: a guest started
//! with `acpi=off`, or built without ACPI, still finds its CPUs and INTx lines there.

mod dsdt;

pub use dsdt::DsdtInputs;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::power::{
    POWER_BASE, POWER_BUTTON_GSI, RESET, RESET_VALUE, SLEEP_CONTROL, SLEEP_STATUS,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::memory::{IOAPIC_START, LAPIC_START};

/// Where the RSDP goes (16-byte aligned, inside the area Linux scans).
pub const RSDP_START: u64 = 0xe_0000;
/// End of the area the tables may use (the BIOS area ends at 1 MiB).
pub const ACPI_END: u64 = 0x10_0000;
const OEM_ID: [u8; 6] = *b"PASSVM";
const OEM_TABLE_ID: [u8; 8] = *b"PASSVMVM";
const OEM_REVISION: u32 = 1;
/// The DSDT's header revision: 2 makes integers 64-bit (the 64-bit BAR window needs it).
const DSDT_REVISION: u8 = 2;
/// `IAPC_BOOT_ARCH` bit: VGA not present (ACPI 6.5, table 5.11).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// `IAPC_BOOT_ARCH` bit: MSI not supported. Not set: passvm delivers MSIs.
#[cfg(test)]
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// `IAPC_BOOT_ARCH` bit: an 8042 is present. Not set (see the module doc).
#[cfg(test)]
const IAPC_8042: u16 = 1 << 1;
/// The hypervisor vendor identity in the FADT ("PASSVM" as a little-endian number).
const HYPERVISOR_ID: u64 = u64::from_le_bytes(*b"PASSVM\0\0");

/// Writing the tables failed.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables outgrew the BIOS area.
    #[error("the ACPI tables need {need} bytes from {RSDP_START:#x}, more than the {} below 1 MiB", ACPI_END - RSDP_START)]
    TooLarge {
        /// Bytes needed.
        need: u64,
    },
    /// Guest memory refused the write (it does not cover the BIOS area).
    #[error("writing the ACPI tables into guest RAM: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// What the tables describe.
#[derive(Debug, Clone, Copy)]
pub struct AcpiInputs {
    /// vCPUs (local APIC ids 0..vcpus).
    pub vcpus: u8,
    /// The IOAPIC's id (the MP table's choice, so both agree).
    pub ioapic_id: u8,
    /// The PCI host bridge and its windows.
    pub dsdt: DsdtInputs,
}

/// The tables, laid out from [`RSDP_START`]: (guest address, bytes), RSDP first.
pub fn build(inputs: &AcpiInputs) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let mut next = align16(RSDP_START + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>, out: &mut Vec<(u64, Vec<u8>)>| {
        let at = next;
        next = align16(at + bytes.len() as u64);
        out.push((at, bytes));
        at
    };
    let mut tables = Vec::new();

    let body = dsdt::aml(&inputs.dsdt);
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&body);
    let dsdt_at = place(dsdt.as_slice().to_vec(), &mut tables);

    let fadt_at = place(bytes_of(&fadt(dsdt_at)), &mut tables);
    let madt_at = place(bytes_of(&madt(inputs)), &mut tables);
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let (ecam_base, ecam_buses) = inputs.dsdt.ecam;
    mcfg.add_ecam(ecam_base, 0, 0, ecam_buses - 1);
    let mcfg_at = place(bytes_of(&mcfg), &mut tables);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    xsdt.add_entry(mcfg_at);
    let xsdt_at = place(bytes_of(&xsdt), &mut tables);

    if next > ACPI_END {
        return Err(AcpiError::TooLarge {
            need: next - RSDP_START,
        });
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_at);
    tables.insert(0, (RSDP_START, bytes_of(&rsdp)));
    Ok(tables)
}

/// Builds the tables and writes them into guest RAM; returns the RSDP's address.
pub fn write(mem: &GuestMemoryMmap, inputs: &AcpiInputs) -> Result<u64, AcpiError> {
    for (at, bytes) in build(inputs)? {
        mem.write_slice(&bytes, GuestAddress(at))?;
    }
    Ok(RSDP_START)
}

/// What the ACPI tables describe: the vCPUs, and the PCI windows of this VM's layout.
pub fn inputs(cfg: &crate::config::VmConfig, layout: &crate::memory::MemoryLayout) -> AcpiInputs {
    let last = |start: u64, size: u64| start + size.saturating_sub(1);
    let io = crate::passthrough::IO_WINDOW;
    AcpiInputs {
        vcpus: cfg.vcpus,
        // The MP table's choice: the id after the last vCPU.
        ioapic_id: cfg.vcpus,
        dsdt: DsdtInputs {
            io_window: (io.base as u16, last(io.base, io.size) as u16),
            mmio32: (
                layout.mmio32.start as u32,
                last(layout.mmio32.start, layout.mmio32.size) as u32,
            ),
            mmio64: (
                layout.mmio64.start,
                last(layout.mmio64.start, layout.mmio64.size),
            ),
            intx_gsi: crate::passthrough::intx_gsi,
            ecam: (
                crate::memory::ECAM_START,
                crate::memory::pci_buses(cfg.pcie_ports),
            ),
            power_button_gsi: POWER_BUTTON_GSI,
        },
    }
}

fn fadt(dsdt_at: u64) -> impl Aml {
    let port = |offset: u64| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            POWER_BASE + offset,
        )
    };
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_at)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // Set means "no fixed-feature button": a reduced platform has none.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.sleep_control_reg = port(SLEEP_CONTROL);
    f.sleep_status_reg = port(SLEEP_STATUS);
    f.reset_reg = port(RESET);
    f.reset_value = RESET_VALUE;
    f.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    f.hypervisor_vendor_identity = HYPERVISOR_ID.into();
    f.finalize()
}

fn madt(inputs: &AcpiInputs) -> MADT {
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_START as u32),
    );
    for id in 0..inputs.vcpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(inputs.ioapic_id, IOAPIC_START as u32, 0));
    m
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn align16(v: u64) -> u64 {
    v.div_ceil(16) * 16
}

#[cfg(test)]
mod tests;
