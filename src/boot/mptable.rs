//! Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its CPUs,
//! its IOAPIC and the wiring of ISA and PCI interrupts.
//!
//! passvm describes the platform with ACPI (src/acpi/); this table is for the guests that
//! do not use it: booted with `acpi=off`, or built without `CONFIG_ACPI`. Linux then
//! scans for the MP floating pointer in the first KiB of the EBDA, the last KiB of base
//! memory and 0xf0000–0xfffff. The pointer is written at [`MPTABLE_START`] (0x9fc00, the
//! "last KiB of 640 KiB"), followed by the configuration table. Seen in the nested bed
//! (6.12 guest, PVH and bzImage entries alike, before passvm had ACPI tables):
//! `found SMP MP-table at [mem 0x0009fc00-...]`,
//! `Processor #0 (Bootup-CPU)`, `Processor #1`, `IOAPIC[0]: apic_id 2, ... GSI 0-23`,
//! `..TIMER: vector=0x30 apic1=0 pin1=0`, and `smp: Brought up 1 node, 2 CPUs`.
//!
//! The table holds:
//!
//! - one processor entry per vCPU, APIC id = vCPU index (what KVM gives each vCPU), the
//!   BSP flag on vCPU 0;
//! - bus 0 = `PCI`, bus 1 = `ISA`. The PCI bus id must equal the PCI bus number because
//!   Linux matches INTx entries by it (`IO_APIC_get_PCI_irq_vector`);
//! - the IOAPIC at 0xfec00000 with id = number of vCPUs (distinct from every APIC id);
//! - ISA IRQs 0–15 to IOAPIC pins 0–15, "conforming" (edge, active high). IRQ 0 goes to pin 0,
//!   not to pin 2 as on PC firmware: KVM's in-kernel PIT raises GSI 0 and KVM's default
//!   routing sends GSI n to IOAPIC pin n, so pin 0 is where the timer really arrives;
//! - PCI INTx lines ([`PciIntx`]), level-triggered and **active high**. KVM's IOAPIC ignores
//!   the polarity bit: an irqfd or `KVM_IRQ_LINE` level of 1 always means "asserted", so the
//!   guest must program active-high to keep its view consistent with the device's (QEMU
//!   describes PCI INTx to KVM guests as `Level, ActiveHigh` for the same reason);
//! - LINT0 = ExtINT (the 8259 PIC through the BSP's LAPIC), LINT1 = NMI, on all LAPICs.
//!
//! [`write()`] may be called again after `boot::load` (before the vCPUs run) to add the INTx
//! lines of devices created later; it rewrites the whole table in place.

use devices::pci::route_table::IOAPIC_PINS;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::MPTABLE_START;
use crate::memory::{HIGH_RAM_START, IOAPIC_START, LAPIC_START};

/// First IOAPIC pin not used by ISA interrupts; PCI INTx lines should use 16..24.
pub const FIRST_PCI_IOAPIC_PIN: u8 = 16;
/// Most vCPUs the table can describe: xAPIC ids are 8 bits, 0xff is broadcast, and the
/// IOAPIC takes the id after the last vCPU.
pub const MAX_VCPUS: u8 = 254;

const PCI_BUS_ID: u8 = 0;
const ISA_BUS_ID: u8 = 1;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REV: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINTR: u8 = 3;
const ENTRY_LINTR: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 stepping 0 signature, and FPU + APIC feature flags, as firmware writes for
/// CPUs it does not identify further; Linux only logs these.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Polarity/trigger flags: bits 1:0 polarity, bits 3:2 trigger; 0 = bus default.
const IRQ_FLAGS_CONFORMING: u16 = 0;
const IRQ_POLARITY_HIGH: u16 = 0b01;
const IRQ_TRIGGER_LEVEL: u16 = 0b11 << 2;

const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;

/// A PCI interrupt pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxPin {
    /// INTA#
    A,
    /// INTB#
    B,
    /// INTC#
    C,
    /// INTD#
    D,
}

impl IntxPin {
    /// From the PCI `Interrupt Pin` config register (1 = INTA# … 4 = INTD#).
    pub fn from_config(value: u8) -> Option<Self> {
        match value {
            1 => Some(IntxPin::A),
            2 => Some(IntxPin::B),
            3 => Some(IntxPin::C),
            4 => Some(IntxPin::D),
            _ => None,
        }
    }

    fn index(self) -> u8 {
        self as u8
    }
}

/// One PCI INTx line wired to an IOAPIC pin (bus 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIntx {
    /// PCI device (slot) number on bus 0, 0..32.
    pub device: u8,
    /// Which INTx pin of the device.
    pub pin: IntxPin,
    /// IOAPIC input (= KVM GSI with the default routing), normally 16..24.
    pub ioapic_pin: u8,
}

impl PciIntx {
    /// The route of a device on bus 0 from what the VMM knows about it: its slot, the value
    /// of its `Interrupt Pin` config register (1 = INTA# … 4 = INTD#) and the GSI its INTx
    /// irqfd raises (an IOAPIC pin with KVM's default routing). `None` when the device has
    /// no INTx pin or the values cannot be described (slot ≥ 32, GSI beyond the IOAPIC).
    pub fn new(device: u8, interrupt_pin: u8, gsi: u32) -> Option<Self> {
        let pin = IntxPin::from_config(interrupt_pin)?;
        let ioapic_pin = u8::try_from(gsi)
            .ok()
            .filter(|p| u32::from(*p) < IOAPIC_PINS)?;
        (device < 32).then_some(PciIntx {
            device,
            pin,
            ioapic_pin,
        })
    }
}

/// Errors from writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// vCPU count out of range.
    #[error("{0} vCPUs cannot be described in an MP table; use --cpus boot=1..={MAX_VCPUS}", MAX_VCPUS = MAX_VCPUS)]
    VcpuCount(u8),
    /// An INTx entry is out of range.
    #[error("PCI INTx route {0:?} is invalid: the device must be < 32 and the IOAPIC pin < {IOAPIC_PINS}")]
    BadIntx(PciIntx),
    /// More INTx routes than bus 0 has pins.
    #[error("{0} PCI INTx routes requested, but bus 0 has at most 128 (32 slots x 4 pins)")]
    TooManyIntx(usize),
    /// The table would not fit below 1 MiB.
    #[error("the MP table for {0} vCPUs does not fit below 1 MiB")]
    TooLarge(u8),
    /// Guest memory write failed.
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Builds the MP floating pointer and configuration table as they go at [`MPTABLE_START`].
pub fn build(vcpus: u8, intx: &[PciIntx]) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(vcpus));
    }
    // Bus 0 has 32 slots of 4 pins; more routes than that is a caller bug, refused before
    // the entry count could overflow.
    if intx.len() > 32 * 4 {
        return Err(MpTableError::TooManyIntx(intx.len()));
    }
    if let Some(bad) = intx
        .iter()
        .find(|r| r.device >= 32 || u32::from(r.ioapic_pin) >= IOAPIC_PINS)
    {
        return Err(MpTableError::BadIntx(*bad));
    }
    let ioapic_id = vcpus;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    for (id, name) in [(PCI_BUS_ID, b"PCI   "), (ISA_BUS_ID, b"ISA   ")] {
        entries.extend_from_slice(&[ENTRY_BUS, id]);
        entries.extend_from_slice(name);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;

    let mut io_intr = |bus: u8, bus_irq: u8, pin: u8, flags: u16| {
        entries.extend_from_slice(&[ENTRY_IOINTR, INT_TYPE_INT]);
        entries.extend_from_slice(&flags.to_le_bytes());
        entries.extend_from_slice(&[bus, bus_irq, ioapic_id, pin]);
        count += 1;
    };
    for irq in 0..16 {
        io_intr(ISA_BUS_ID, irq, irq, IRQ_FLAGS_CONFORMING);
    }
    for r in intx {
        // MP spec: for PCI the source "IRQ" is (device << 2) | pin.
        io_intr(
            PCI_BUS_ID,
            (r.device << 2) | r.pin.index(),
            r.ioapic_pin,
            IRQ_POLARITY_HIGH | IRQ_TRIGGER_LEVEL,
        );
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LINTR, kind]);
        entries.extend_from_slice(&IRQ_FLAGS_CONFORMING.to_le_bytes());
        // Destination 0xff = every local APIC.
        entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }

    let table_addr = MPTABLE_START + FLOATING_SIZE as u64;
    let table_len = HEADER_SIZE + entries.len();
    if MPTABLE_START + (FLOATING_SIZE + table_len) as u64 > HIGH_RAM_START {
        return Err(MpTableError::TooLarge(vcpus));
    }

    let mut out = Vec::with_capacity(FLOATING_SIZE + table_len);
    // Floating pointer structure.
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out[..FLOATING_SIZE]);
    // Configuration table header.
    let header_start = out.len();
    out.extend_from_slice(b"PCMP");
    out.extend_from_slice(&(table_len as u16).to_le_bytes());
    out.extend_from_slice(&[SPEC_REV, 0]);
    out.extend_from_slice(b"PASSVM  ");
    out.extend_from_slice(b"KVM GUEST   ");
    out.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    out.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    out.extend_from_slice(&entries);
    out[header_start + 7] = checksum(&out[header_start..]);
    Ok(out)
}

/// Writes the MP table for `vcpus` processors and the given PCI INTx lines into guest memory.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8, intx: &[PciIntx]) -> Result<(), MpTableError> {
    let bytes = build(vcpus, intx)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

/// The byte that makes `data` sum to zero (mod 256), given its checksum byte is 0 now.
fn checksum(data: &[u8]) -> u8 {
    data.iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(data: &[u8]) -> u8 {
        data.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    /// A small MP table parser, independent of the builder, for the assertions.
    struct Parsed {
        processors: Vec<(u8, u8)>, // (apic id, flags)
        buses: Vec<(u8, String)>,
        ioapics: Vec<(u8, u32)>,
        io_intr: Vec<(u16, u8, u8, u8, u8)>, // flags, bus, bus irq, dst apic, pin
        lintr: Vec<(u8, u8)>,                // type, lint
        lapic: u32,
    }

    fn parse(table: &[u8]) -> Parsed {
        assert_eq!(&table[0..4], b"_MP_");
        assert_eq!(sum(&table[..16]), 0, "floating pointer checksum");
        let phys = u32::from_le_bytes(table[4..8].try_into().unwrap()) as u64;
        let off = (phys - MPTABLE_START) as usize;
        let hdr = &table[off..];
        assert_eq!(&hdr[0..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        assert_eq!(hdr[6], 4, "spec 1.4");
        assert_eq!(sum(&hdr[..len]), 0, "config table checksum");
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        let lapic = u32::from_le_bytes(hdr[36..40].try_into().unwrap());
        let mut p = Parsed {
            processors: vec![],
            buses: vec![],
            ioapics: vec![],
            io_intr: vec![],
            lintr: vec![],
            lapic,
        };
        let mut i = HEADER_SIZE;
        for _ in 0..count {
            let e = &hdr[i..];
            match e[0] {
                0 => {
                    p.processors.push((e[1], e[3]));
                    i += 20;
                }
                1 => {
                    p.buses
                        .push((e[1], String::from_utf8_lossy(&e[2..8]).trim().to_string()));
                    i += 8;
                }
                2 => {
                    p.ioapics
                        .push((e[1], u32::from_le_bytes(e[4..8].try_into().unwrap())));
                    i += 8;
                }
                3 => {
                    p.io_intr
                        .push((u16::from_le_bytes([e[2], e[3]]), e[4], e[5], e[6], e[7]));
                    i += 8;
                }
                4 => {
                    p.lintr.push((e[1], e[7]));
                    i += 8;
                }
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(i, len, "entries fill the table exactly");
        p
    }

    #[test]
    fn table_describes_cpus_ioapic_and_isa_irqs() {
        for vcpus in [1u8, 2, 8] {
            let p = parse(&build(vcpus, &[]).unwrap());
            assert_eq!(p.processors.len(), vcpus as usize);
            for (i, (id, flags)) in p.processors.iter().enumerate() {
                assert_eq!(*id as usize, i);
                assert_eq!(*flags, if i == 0 { 3 } else { 1 }, "BSP flag only on 0");
            }
            assert_eq!(p.ioapics, vec![(vcpus, 0xfec0_0000)]);
            assert_eq!(p.lapic, 0xfee0_0000);
            assert!(p.buses.contains(&(0, "PCI".into())));
            assert!(p.buses.contains(&(1, "ISA".into())));
            let isa: Vec<_> = p.io_intr.iter().filter(|e| e.1 == 1).collect();
            assert_eq!(isa.len(), 16);
            for e in isa {
                assert_eq!(e.2, e.4, "ISA IRQ n on pin n (the KVM PIT raises GSI 0)");
                assert_eq!(e.3, vcpus, "routed to our IOAPIC");
            }
            assert_eq!(p.lintr, vec![(3, 0), (1, 1)], "LINT0 ExtINT, LINT1 NMI");
        }
    }

    #[test]
    fn pci_intx_entries_are_level_active_high() {
        let routes = [
            PciIntx {
                device: 3,
                pin: IntxPin::A,
                ioapic_pin: 16,
            },
            PciIntx {
                device: 4,
                pin: IntxPin::C,
                ioapic_pin: 19,
            },
        ];
        let p = parse(&build(2, &routes).unwrap());
        let pci: Vec<_> = p.io_intr.iter().filter(|e| e.1 == 0).copied().collect();
        assert_eq!(
            pci,
            vec![(0x0d, 0, 3 << 2, 2, 16), (0x0d, 0, (4 << 2) | 2, 2, 19)]
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        assert!(matches!(build(0, &[]), Err(MpTableError::VcpuCount(0))));
        assert!(matches!(build(255, &[]), Err(MpTableError::VcpuCount(255))));
        let bad = PciIntx {
            device: 32,
            pin: IntxPin::A,
            ioapic_pin: 16,
        };
        assert!(matches!(build(1, &[bad]), Err(MpTableError::BadIntx(_))));
        assert_eq!(IntxPin::from_config(0), None);
        assert_eq!(IntxPin::from_config(2), Some(IntxPin::B));
    }

    #[test]
    fn intx_route_from_device_facts() {
        assert_eq!(
            PciIntx::new(3, 1, 16),
            Some(PciIntx {
                device: 3,
                pin: IntxPin::A,
                ioapic_pin: 16
            })
        );
        assert_eq!(PciIntx::new(3, 0, 16), None, "no INTx pin");
        assert_eq!(PciIntx::new(3, 1, 24), None, "beyond the IOAPIC");
        assert_eq!(PciIntx::new(32, 1, 16), None, "no such slot");
    }

    #[test]
    fn largest_table_fits_below_1_mib() {
        let p = parse(&build(MAX_VCPUS, &[]).unwrap());
        assert_eq!(p.processors.len(), MAX_VCPUS as usize);
    }

    #[test]
    fn write_places_it_where_linux_scans() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write(&mem, 2, &[]).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(639 * 1024)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
