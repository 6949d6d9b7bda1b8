//! The DSDT's AML: what the guest's ACPI interpreter finds in the namespace.
//!
//! ```text
//! \_S5_            soft-off sleep type (devices::power::S5_SLP_TYP)
//! \_SB.PCI0        the PCIe host bridge: _CRS with the bus range, the config ports and
//!                  the I/O, 32-bit and 64-bit BAR windows; _PRT for every slot's INTx;
//!                  _OSC granting the OS native control of PCIe features
//! \_SB.MBRD        a motherboard resource reserving the ECAM window
//! \_SB.COM1        the 8250 at 0x3f8, IRQ 4
//! \_SB.PWRB        the power button, notified by
//! \_SB.GED_        the Generic Event Device on devices::power::POWER_BUTTON_GSI
//! ```
//!
//! Built with rust-vmm's `acpi_tables::aml` rather than a compiled ASL blob, so the
//! windows follow the memory layout of the VM being built.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Arg, CreateDWordField, Device, EISAName, Equal, If,
    Interrupt, Memory32Fixed, Method, Name, Notify, Or, Package, Path, ResourceTemplate, Return,
    Scope, Uuid, IO,
};
use acpi_tables::{Aml, AmlSink};

use devices::legacy::serial::{COM1_BASE, COM1_IRQ};
use devices::pci::host_bridge::{PCI_CONFIG_BASE, PCI_CONFIG_PORTS, PCI_SLOTS};
use devices::power::S5_SLP_TYP;

/// The UUID of the PCI host bridge `_OSC` (PCI Firmware Specification 3.3, 4.5.1).
const PCI_HOST_BRIDGE_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` status bit: the UUID is not one this object knows.
const OSC_UNRECOGNIZED_UUID: u32 = 1 << 2;

/// What the DSDT describes, from the VM being built.
#[derive(Debug, Clone, Copy)]
pub struct DsdtInputs {
    /// The I/O-port window for I/O BARs (first, last port).
    pub io_window: (u16, u16),
    /// The 32-bit BAR window (first, last byte).
    pub mmio32: (u32, u32),
    /// The 64-bit BAR window (first, last byte).
    pub mmio64: (u64, u64),
    /// The IOAPIC pin of a slot's INTx line, for the slots 0-31.
    pub intx_gsi: fn(u8) -> u32,
    /// The ECAM window (base, bus count): the buses the bridge decodes, and a motherboard
    /// resource so the OS accepts the MCFG's window.
    pub ecam: (u64, u8),
    /// The GSI the power button's Generic Event Device interrupts on.
    pub power_button_gsi: u32,
}

/// The DSDT's AML body (the table header is the caller's).
pub fn aml(inputs: &DsdtInputs) -> Vec<u8> {
    let mut out = Vec::new();
    // SLP_TYPa, SLP_TYPb, two reserved bytes: only SLP_TYPa is used on a reduced platform.
    let s5 = Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &0u8, &0u8]);
    Name::new("\\_S5_".into(), &s5).to_aml_bytes(&mut out);
    let pci0 = Pci0(inputs);
    let mbrd = Motherboard(inputs);
    let ged = Ged(inputs.power_button_gsi);
    Scope::new(
        "\\_SB_".into(),
        vec![&pci0, &mbrd, &Com1, &PowerButtonDevice, &ged],
    )
    .to_aml_bytes(&mut out);
    out
}

/// One `_PRT` entry: `Package { address, pin, source (0: a GSI), GSI }`.
struct PrtEntry {
    slot: u8,
    pin: u8,
    gsi: u32,
}

impl Aml for PrtEntry {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Function "any" (0xffff) of the slot.
        let address = (u32::from(self.slot) << 16) | 0xffff;
        Package::new(vec![&address, &self.pin, &0u8, &self.gsi]).to_aml_bytes(sink);
    }
}

/// `\_SB.PCI0`, the host bridge of bus 0.
struct Pci0<'a>(&'a DsdtInputs);

impl Aml for Pci0<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let inputs = self.0;
        let (io_min, io_max) = inputs.io_window;
        let (m32_min, m32_max) = inputs.mmio32;
        let (m64_min, m64_max) = inputs.mmio64;
        let bus = AddressSpace::<u16>::new_bus_number(0, u16::from(inputs.ecam.1) - 1);
        let config_ports = IO::new(
            PCI_CONFIG_BASE as u16,
            PCI_CONFIG_BASE as u16,
            1,
            PCI_CONFIG_PORTS as u8,
        );
        let io = AddressSpace::<u16>::new_io(io_min, io_max, None);
        let mmio32 = AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            m32_min,
            m32_max,
            None,
        );
        let mmio64 = AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::Cacheable,
            true,
            m64_min,
            m64_max,
            None,
        );
        let crs = ResourceTemplate::new(vec![&bus, &config_ports, &io, &mmio32, &mmio64]);
        // Slot 0 is the host bridge. passvm wires a device's INTx to its slot's line
        // whatever pin it uses, so every pin of a slot names the same GSI. A GSI entry (no
        // link device) is level-triggered and, by the ACPI convention, active-low; KVM's
        // IOAPIC model delivers the irqfd's level either way.
        let prt: Vec<PrtEntry> = (1..PCI_SLOTS)
            .flat_map(|slot| {
                (0..4u8).map(move |pin| PrtEntry {
                    slot,
                    pin,
                    gsi: (inputs.intx_gsi)(slot),
                })
            })
            .collect();
        let prt_refs: Vec<&dyn Aml> = prt.iter().map(|e| e as &dyn Aml).collect();
        let prt = Package::new(prt_refs);
        let hid = EISAName::new("PNP0A08");
        let cid = EISAName::new("PNP0A03");
        Device::new(
            "PCI0".into(),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_CID".into(), &cid),
                &Name::new("_ADR".into(), &0u8),
                &Name::new("_SEG".into(), &0u8),
                &Name::new("_UID".into(), &0u8),
                &Name::new("_BBN".into(), &0u8),
                &Name::new("_CRS".into(), &crs),
                &Name::new("_PRT".into(), &prt),
                &Osc,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `_OSC(UUID, revision, count, capabilities)` of the host bridge: every control the OS
/// asks for in the third dword is granted as asked (no firmware here owns hotplug, PME,
/// AER or LTR), and any other UUID is answered "unrecognized".
struct Osc;

impl Aml for Osc {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let cdw1 = Path::new("CDW1");
        let uuid = Uuid::new(PCI_HOST_BRIDGE_OSC_UUID);
        let is_pci = Equal::new(&Arg(0), &uuid);
        let granted = Return::new(&Arg(3));
        Method::new(
            "_OSC".into(),
            4,
            false,
            vec![
                &CreateDWordField::new(&cdw1, &Arg(3), &0u8),
                &If::new(&is_pci, vec![&granted]),
                &Or::new(&cdw1, &cdw1, &OSC_UNRECOGNIZED_UUID),
                &Return::new(&Arg(3)),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB.MBRD`, a motherboard resource (PNP0C02) holding the ECAM window: Linux uses an
/// MCFG window only where firmware also reserves it.
struct Motherboard<'a>(&'a DsdtInputs);

impl Aml for Motherboard<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let (base, buses) = self.0.ecam;
        let window = Memory32Fixed::new(false, base as u32, u32::from(buses) << 20);
        simple_device(
            "MBRD",
            "PNP0C02",
            0,
            &ResourceTemplate::new(vec![&window]),
            sink,
        );
    }
}

/// `\_SB.COM1`, the 8250 passvm emulates.
struct Com1;

impl Aml for Com1 {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let base = COM1_BASE as u16;
        let ports = IO::new(base, base, 1, 8);
        let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
        simple_device(
            "COM1",
            "PNP0501",
            1,
            &ResourceTemplate::new(vec![&ports, &irq]),
            sink,
        );
    }
}

/// `\_SB.PWRB`, the power button (a control-method button: the FADT says there is no
/// fixed-feature one).
struct PowerButtonDevice;

impl Aml for PowerButtonDevice {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let hid = EISAName::new("PNP0C0C");
        Device::new(
            "PWRB".into(),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_UID".into(), &0u8),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// `\_SB.GED_`, the Generic Event Device (ACPI0013) of a reduced platform: an edge on its
/// GSI runs `_EVT`, which notifies `\_SB.PWRB` with 0x80 ("button pressed").
struct Ged(u32);

impl Aml for Ged {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let irq = Interrupt::new(true, true, false, false, self.0);
        let crs = ResourceTemplate::new(vec![&irq]);
        let pwrb = Path::new("\\_SB_.PWRB");
        let notify = Notify::new(&pwrb, &0x80u8);
        let ours = Equal::new(&Arg(0), &self.0);
        let when_ours = If::new(&ours, vec![&notify]);
        let evt = Method::new("_EVT".into(), 1, false, vec![&when_ours]);
        Device::new(
            "GED_".into(),
            vec![
                &Name::new("_HID".into(), &"ACPI0013"),
                &Name::new("_UID".into(), &0u8),
                &Name::new("_CRS".into(), &crs),
                &evt,
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// A device that is only its PNP id, unique id and current resources.
fn simple_device(name: &str, hid: &str, uid: u8, crs: &ResourceTemplate, sink: &mut dyn AmlSink) {
    let hid = EISAName::new(hid);
    Device::new(
        name.into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), crs),
        ],
    )
    .to_aml_bytes(sink);
}
