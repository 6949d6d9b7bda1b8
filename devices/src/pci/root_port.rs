//! A PCI Express root port with a native hot-plug slot: the bridge function a guest's
//! `pcieport` driver binds and whose slot its `pciehp` driver runs.
//!
//! **Not wired yet.** This is the device model with its owner-side API; putting ports on
//! bus 0, routing their secondary buses through ECAM and the `--pcie-ports N` option are
//! the next part of issue 14 (docs/hotplug.md).
//!
//! # What the guest sees
//!
//! A type 1 header (Red Hat 1b36:000c, class 06/04/00) with writable bus numbers, an I/O
//! window (16-bit decoding), a memory window and a 64-bit prefetchable window, then two
//! capabilities: PCI Express (version 2, Root Port, slot implemented) at 0x40 and MSI
//! (64-bit address, one vector) at 0x80. The extended space (0x100-0xfff) reads as zero:
//! an empty extended capability list.
//!
//! The slot has an attention button, a power controller, attention and power indicators
//! and hot-plug capability; no MRL sensor, no electromechanical interlock, no surprise
//! removal, and *no command completed support* (Slot Capabilities NCCS set): every Slot
//! Control write takes effect at once, so pciehp never waits for, or times out on, a
//! Command Completed event (`pcie_wait_cmd` returns at once when NCCS is set). The link
//! reports Data Link Layer Link Active (and is capable of reporting it), active exactly
//! while a card is present; pciehp always enables the DLL State Changed event and uses it
//! to see a card arrive, because with an attention button it enables Attention Button
//! Pressed instead of Presence Detect Changed (`pcie_enable_notification`).
//!
//! # Hostile guests
//!
//! The guest controls every config write. Each register has a mask of writable bits and a
//! mask of write-1-to-clear bits; a write changes nothing else, so read-only and reserved
//! bits keep their values (reserved bits read as zero). Accesses of any size at any
//! offset are taken: 1, 2 or 4 bytes inside one dword are applied, anything else is
//! dropped; reads past the capabilities, of the extended space and beyond 4 KiB return 0.
//! Nothing the guest writes can set a slot event bit, and the events queue handed to the
//! owner is bounded ([`MAX_QUEUED_EVENTS`]), so a guest toggling Slot Control in a loop
//! costs memory only up to that bound.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use super::caps::{id as cap_id, CAP_POINTER};
use super::config_space::{merge_write, write_lanes, COMMAND, HEADER_TYPE, INTERRUPT_LINE};
use super::{MsiMessage, PciDevice};

/// Vendor ID: Red Hat, Inc., the vendor of QEMU's virtual devices (and of our host bridge).
pub const ROOT_PORT_VENDOR: u16 = 0x1b36;
/// Device ID: Red Hat's "PCIe root port", the one QEMU's `pcie-root-port` uses.
///
/// Guests bind `pcieport` by class and port type, not by ID, but the ID decides which
/// quirks apply: a real vendor's bridge ID would pull in that vendor's errata handling
/// (Linux, for instance, assumes Intel bridges with command completed support are broken,
/// `quirk_cmd_compl`), which this model has no reason to get. 1b36:000c is a port every
/// guest already knows as a well-behaved virtual one.
pub const ROOT_PORT_DEVICE: u16 = 0x000c;

/// Dwords of config space the model stores (the 256-byte header space). Everything past
/// it, including the whole extended space, reads as zero.
const STORED_DWORDS: usize = 64;

/// Slot events the owner has not drained yet are kept up to this many; the oldest go
/// first. The owner reads the current state through the accessors anyway, so a lost
/// event loses no state.
pub const MAX_QUEUED_EVENTS: usize = 64;

// Type 1 header offsets.
const STATUS: usize = 0x06;
const CLASS_REVISION: usize = 0x08;
const CACHE_LINE_SIZE: usize = 0x0c;
const PRIMARY_BUS: usize = 0x18;
const SECONDARY_BUS: usize = 0x19;
const SUBORDINATE_BUS: usize = 0x1a;
const IO_BASE: usize = 0x1c;
const IO_LIMIT: usize = 0x1d;
const SECONDARY_STATUS: usize = 0x1e;
const MEMORY_BASE: usize = 0x20;
const MEMORY_LIMIT: usize = 0x22;
const PREF_BASE: usize = 0x24;
const PREF_LIMIT: usize = 0x26;
const PREF_BASE_UPPER: usize = 0x28;
const PREF_LIMIT_UPPER: usize = 0x2c;
const BRIDGE_CONTROL: usize = 0x3e;

const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_MASTER: u16 = 1 << 2;
/// I/O, memory, bus master, parity error response, SERR# enable, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status (and secondary status) error bits: RW1C. Nothing sets them; they are RW1C so a
/// guest's clearing write behaves as on hardware.
const STATUS_ERRORS: u16 = 0xf900;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Class 06 (bridge), subclass 04 (PCI-to-PCI), prog-if 00, revision 0.
const CLASS_PCI_BRIDGE: u32 = 0x0604_0000;
/// Header type 1 (PCI-to-PCI bridge), single function.
const HEADER_TYPE_BRIDGE: u32 = 0x01;

/// I/O base/limit: bits 7:4 are address bits 15:12; the low nibble 0 says 16-bit decoding.
const IO_WINDOW_BITS: u8 = 0xf0;
/// Memory and prefetchable base/limit: bits 15:4 are address bits 31:20.
const MEMORY_WINDOW_BITS: u16 = 0xfff0;
/// Prefetchable base/limit low nibble: 64-bit addressing (upper registers at 0x28/0x2c).
const PREF_64BIT: u16 = 0x0001;

/// Bridge control: parity error response, SERR# enable, secondary bus reset. ISA and VGA
/// enable are hardwired to 0: the port forwards only its windows, never the legacy ranges.
const BRIDGE_CONTROL_WRITABLE: u16 = 0x0043;
const BRIDGE_CONTROL_BUS_RESET: u16 = 1 << 6;

// The capability list.
const PCIE_CAP: usize = 0x40;
const MSI_CAP: usize = 0x80;
/// PCI Express capability ID (not in `caps::id`, which lists only what passthrough needs).
const CAP_ID_PCIE: u8 = 0x10;

// PCI Express capability registers (offsets from PCIE_CAP).
const EXP_FLAGS: usize = PCIE_CAP + 0x02;
const DEVCAP: usize = PCIE_CAP + 0x04;
const DEVCTL: usize = PCIE_CAP + 0x08;
const DEVSTA: usize = PCIE_CAP + 0x0a;
const LNKCAP: usize = PCIE_CAP + 0x0c;
const LNKCTL: usize = PCIE_CAP + 0x10;
const LNKSTA: usize = PCIE_CAP + 0x12;
const SLTCAP: usize = PCIE_CAP + 0x14;
const SLTCTL: usize = PCIE_CAP + 0x18;
const SLTSTA: usize = PCIE_CAP + 0x1a;
const RTCTL: usize = PCIE_CAP + 0x1c;
const RTSTA: usize = PCIE_CAP + 0x20;
const LNKCAP2: usize = PCIE_CAP + 0x2c;

/// Capability version 2, device/port type 4 (Root Port), slot implemented, interrupt
/// message number 0 (the one MSI vector).
const EXP_FLAGS_VALUE: u16 = 0x0002 | (0x4 << 4) | (1 << 8);
/// Role-based error reporting (required since PCIe 1.1); max payload 128 bytes.
const DEVCAP_RBER: u32 = 1 << 15;
/// Device Control: the four error reporting enables and Max Payload Size. Relaxed
/// ordering, extended tags, phantom functions, aux power, no snoop and max read request
/// are hardwired to 0, as the spec permits a port that never uses them.
const DEVCTL_WRITABLE: u16 = 0x00ef;
/// Device Status: correctable, non-fatal, fatal, unsupported request detected (RW1C).
const DEVSTA_ERRORS: u16 = 0x000f;
/// Link: 2.5 GT/s, x1 (bits 3:0 speed, 9:4 width), as both capability and status.
const LINK_SPEED_2_5GT: u32 = 0x1;
const LINK_WIDTH_X1: u32 = 0x1 << 4;
/// Data Link Layer Link Active Reporting Capable: pciehp then waits for DLLLA rather than
/// sleeping a fixed second, and sees link changes as hot-plug events.
const LNKCAP_DLLLARC: u32 = 1 << 20;
/// Link Control: ASPM control, link disable, common clock configuration, extended synch.
/// Stored only: the link state follows the card, not these bits. Retrain Link reads 0.
const LNKCTL_WRITABLE: u16 = 0x00d3;
const LNKSTA_DLLLA: u16 = 1 << 13;
/// Link Capabilities 2: supported link speeds vector, 2.5 GT/s only.
const LNKCAP2_SPEEDS: u32 = 1 << 1;

// Slot Capabilities.
const SLTCAP_ABP: u32 = 1 << 0;
const SLTCAP_PCP: u32 = 1 << 1;
const SLTCAP_AIP: u32 = 1 << 3;
const SLTCAP_PIP: u32 = 1 << 4;
const SLTCAP_HPC: u32 = 1 << 6;
const SLTCAP_NCCS: u32 = 1 << 18;
const SLTCAP_PSN_SHIFT: u32 = 19;
/// Physical Slot Number is 13 bits wide.
pub const MAX_SLOT_NUMBER: u16 = 0x1fff;

// Slot Control.
const SLTCTL_ABPE: u16 = 1 << 0;
const SLTCTL_PFDE: u16 = 1 << 1;
const SLTCTL_MRLSCE: u16 = 1 << 2;
const SLTCTL_PDCE: u16 = 1 << 3;
const SLTCTL_CCIE: u16 = 1 << 4;
const SLTCTL_HPIE: u16 = 1 << 5;
const SLTCTL_AIC_SHIFT: u16 = 6;
const SLTCTL_AIC: u16 = 0x3 << SLTCTL_AIC_SHIFT;
const SLTCTL_PIC_SHIFT: u16 = 8;
const SLTCTL_PIC: u16 = 0x3 << SLTCTL_PIC_SHIFT;
/// Power Controller Control: 0 is on, 1 is off.
const SLTCTL_PCC: u16 = 1 << 10;
const SLTCTL_DLLSCE: u16 = 1 << 12;
/// What a guest may change: the event enables the slot has (no MRL, no command
/// completed), the indicators and the power controller. Electromechanical interlock
/// control, auto slot power limit disable and in-band presence detect disable read 0.
const SLTCTL_WRITABLE: u16 = SLTCTL_ABPE
    | SLTCTL_PFDE
    | SLTCTL_PDCE
    | SLTCTL_HPIE
    | SLTCTL_AIC
    | SLTCTL_PIC
    | SLTCTL_PCC
    | SLTCTL_DLLSCE;

// Slot Status.
const SLTSTA_ABP: u16 = 1 << 0;
const SLTSTA_PFD: u16 = 1 << 1;
const SLTSTA_MRLSC: u16 = 1 << 2;
const SLTSTA_PDC: u16 = 1 << 3;
const SLTSTA_CC: u16 = 1 << 4;
const SLTSTA_PDS: u16 = 1 << 6;
const SLTSTA_DLLSC: u16 = 1 << 8;
/// The event bits this slot can set; all RW1C. MRL Sensor Changed and Command Completed
/// are never set (no MRL sensor, no command completed support) and read 0.
const SLTSTA_EVENTS: u16 = SLTSTA_ABP | SLTSTA_PFD | SLTSTA_PDC | SLTSTA_DLLSC;

/// Root Control: system error on correctable/non-fatal/fatal error, PME interrupt enable.
/// CRS software visibility is not offered (Root Capabilities 0), so its enable reads 0.
const RTCTL_WRITABLE: u16 = 0x000f;
/// Root Status PME Status (RW1C); no PME is ever signalled.
const RTSTA_PME_STATUS: u32 = 1 << 16;

// MSI capability registers.
const MSI_CONTROL: usize = MSI_CAP + 0x02;
const MSI_ADDRESS_LO: usize = MSI_CAP + 0x04;
const MSI_ADDRESS_HI: usize = MSI_CAP + 0x08;
const MSI_DATA: usize = MSI_CAP + 0x0c;
const MSI_ENABLE: u16 = 1 << 0;
/// 64-bit address capable; Multiple Message Capable 0 (one vector), so Multiple Message
/// Enable is hardwired to 0 as well; no per-vector masking, no extended message data.
const MSI_64BIT: u16 = 1 << 7;

/// A slot indicator's state, as Slot Control encodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Indicator {
    /// 01b.
    On,
    /// 10b.
    Blink,
    /// 11b.
    Off,
    /// 00b, reserved: a guest may write it, and this is what it then reads.
    Reserved,
}

impl Indicator {
    fn from_bits(bits: u16) -> Self {
        match bits & 0x3 {
            0x1 => Indicator::On,
            0x2 => Indicator::Blink,
            0x3 => Indicator::Off,
            _ => Indicator::Reserved,
        }
    }

    fn bits(self) -> u16 {
        match self {
            Indicator::On => 0x1,
            Indicator::Blink => 0x2,
            Indicator::Off => 0x3,
            Indicator::Reserved => 0x0,
        }
    }
}

/// What the guest did to the slot, for the owner to act on ([`RootPort::take_events`]).
///
/// `PciDevice::write_config_register` returns nothing, so the port queues these on the
/// config write that caused them; the owner drains the queue after each config write it
/// forwards (or on a timer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotEvent {
    /// Power Controller Control went from off to on. pciehp does this before it looks
    /// for the card's function 0 (`board_added`), so the card must be reachable by then.
    PowerOn,
    /// Power Controller Control went from on to off. pciehp does this after it has
    /// unbound the driver and removed the card's functions (`remove_board`), so the
    /// guest no longer uses the card: the owner may detach it and call
    /// [`RootPort::remove_card`].
    PowerOff,
    /// The guest changed the power or attention indicator (pciehp blinks the power
    /// indicator while a button request is pending and while it powers a card up).
    Indicators {
        /// Power indicator.
        power: Indicator,
        /// Attention indicator.
        attention: Indicator,
    },
    /// The guest set Secondary Bus Reset in Bridge Control: the card below should be
    /// reset (pciehp's slot reset and `pci_bridge_secondary_bus_reset` do this).
    SecondaryBusReset,
}

/// How the port raises its hot-plug interrupt: an MSI write of `msg` on the guest's bus.
///
/// The VMM implements it with `KVM_SIGNAL_MSI`; the unit tests record the messages. It is
/// called with the port's lock held (from a vCPU thread for a guest write, from the
/// owner's thread for a slot change), so it must not take that lock. The message is the
/// guest's, unchecked: a message KVM refuses is the implementation's to report.
pub trait HotplugSignal: Send {
    /// Sends one MSI with the guest-programmed `msg`.
    fn signal(&self, msg: MsiMessage);
}

/// The bus numbers of the bridge, as the guest (or [`RootPort::set_bus_numbers`]) set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusNumbers {
    /// The bus the port is on.
    pub primary: u8,
    /// The bus right below the port (where the card's functions are).
    pub secondary: u8,
    /// The highest bus below the port.
    pub subordinate: u8,
}

impl BusNumbers {
    /// The buses the port forwards configuration cycles to, or `None` while the
    /// numbers do not describe any (secondary 0, or subordinate below secondary).
    pub fn downstream(&self) -> Option<RangeInclusive<u8>> {
        (self.secondary != 0 && self.subordinate >= self.secondary)
            .then_some(self.secondary..=self.subordinate)
    }
}

/// An address window of the bridge: `base..=end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeWindow {
    /// First address.
    pub base: u64,
    /// Last address (inclusive).
    pub end: u64,
}

impl BridgeWindow {
    /// Bytes in the window.
    pub fn size(&self) -> u64 {
        self.end.saturating_sub(self.base).saturating_add(1)
    }

    /// Whether `len` bytes at `addr` lie inside the window (a zero length never does).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        len != 0
            && addr >= self.base
            && addr
                .checked_add(len - 1)
                .is_some_and(|last| last <= self.end)
    }
}

/// The three windows of a type 1 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// I/O ports, 4 KiB granularity, 16-bit decoding.
    Io,
    /// Non-prefetchable memory, 1 MiB granularity, below 4 GiB.
    Memory,
    /// Prefetchable memory, 1 MiB granularity, 64-bit.
    Prefetchable,
}

impl WindowKind {
    fn granularity(self) -> u64 {
        match self {
            WindowKind::Io => 0x1000,
            WindowKind::Memory | WindowKind::Prefetchable => 0x10_0000,
        }
    }

    fn max_end(self) -> u64 {
        match self {
            WindowKind::Io => 0xffff,
            WindowKind::Memory => 0xffff_ffff,
            WindowKind::Prefetchable => u64::MAX,
        }
    }
}

/// Errors from building or programming a port.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootPortError {
    /// The physical slot number does not fit Slot Capabilities.
    #[error("physical slot number {0} is too large (at most {MAX_SLOT_NUMBER})")]
    SlotNumberTooLarge(u16),
    /// A window that the registers cannot encode.
    #[error(
        "{kind:?} window {base:#x}-{end:#x} cannot be programmed: it must start and end on \
         {granularity:#x} boundaries and end at or below {max_end:#x}"
    )]
    BadWindow {
        /// Which window.
        kind: WindowKind,
        /// Its first address.
        base: u64,
        /// Its last address.
        end: u64,
        /// The window's granularity.
        granularity: u64,
        /// The highest address the window can reach.
        max_end: u64,
    },
    /// Bus numbers that do not describe a bridge below `primary`.
    #[error(
        "bus numbers primary {primary}, secondary {secondary}, subordinate {subordinate}: \
         need primary < secondary <= subordinate"
    )]
    BadBusNumbers {
        /// Primary.
        primary: u8,
        /// Secondary.
        secondary: u8,
        /// Subordinate.
        subordinate: u8,
    },
}

/// Slot requests the current state does not allow.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum SlotError {
    /// A card is already in the slot.
    #[error("the slot already holds a card")]
    CardPresent,
    /// The slot is empty.
    #[error("the slot is empty")]
    NoCard,
    /// The guest has not powered the slot on: it does not use the card, and an attention
    /// button press would make pciehp power it *on*. Remove the card directly.
    #[error("the guest has not powered the slot on; remove the card directly")]
    PoweredOff,
    /// A removal request is still waiting for the guest. A second press within pciehp's
    /// five seconds would cancel the first, so the port refuses it.
    #[error("a removal request is already pending (a second press would cancel it)")]
    RemovalPending,
}

/// The stored config space: value, writable mask and write-1-to-clear mask per dword.
struct Space {
    regs: [u32; STORED_DWORDS],
    wmask: [u32; STORED_DWORDS],
    w1c: [u32; STORED_DWORDS],
}

/// (dword index, bit shift, bit mask) of a `width`-byte field at `offset`. Only called
/// with the constant offsets of this file, all inside the stored space.
fn field(offset: usize, width: usize) -> (usize, u32, u32) {
    let shift = ((offset & 3) * 8) as u32;
    let mask = match width {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    (offset / 4, shift, mask << shift)
}

impl Space {
    fn zeroed() -> Self {
        Self {
            regs: [0; STORED_DWORDS],
            wmask: [0; STORED_DWORDS],
            w1c: [0; STORED_DWORDS],
        }
    }

    /// Defines the `width`-byte register at `offset`: its reset value and which of its
    /// bits a guest may write or clear.
    fn define(&mut self, offset: usize, width: usize, value: u32, wmask: u32, w1c: u32) {
        let (i, shift, mask) = field(offset, width);
        self.regs[i] = (self.regs[i] & !mask) | ((value << shift) & mask);
        self.wmask[i] = (self.wmask[i] & !mask) | ((wmask << shift) & mask);
        self.w1c[i] = (self.w1c[i] & !mask) | ((w1c << shift) & mask);
    }

    fn get(&self, offset: usize, width: usize) -> u32 {
        let (i, shift, mask) = field(offset, width);
        (self.regs[i] & mask) >> shift
    }

    fn get8(&self, offset: usize) -> u8 {
        self.get(offset, 1) as u8
    }

    fn get16(&self, offset: usize) -> u16 {
        self.get(offset, 2) as u16
    }

    /// Sets a register's value from the device side (no masks apply).
    fn put(&mut self, offset: usize, width: usize, value: u32) {
        let (i, shift, mask) = field(offset, width);
        self.regs[i] = (self.regs[i] & !mask) | ((value << shift) & mask);
    }

    fn put16(&mut self, offset: usize, value: u16) {
        self.put(offset, 2, u32::from(value));
    }

    /// Sets or clears `bits` of the 16-bit register at `offset` from the device side.
    fn update16(&mut self, offset: usize, bits: u16, on: bool) {
        let v = self.get16(offset);
        self.put16(offset, if on { v | bits } else { v & !bits });
    }
}

/// A PCIe root port with one hot-plug slot. See the module documentation.
pub struct RootPort {
    space: Space,
    signal: Box<dyn HotplugSignal>,
    /// The hot-plug interrupt condition as last evaluated; an MSI goes out only when it
    /// turns true (PCIe r4.0 sec 6.7.3.4: the message is sent on each FALSE to TRUE
    /// transition, so pciehp clears every event bit before it expects another).
    interrupt_asserted: bool,
    events: VecDeque<SlotEvent>,
    /// The owner pressed the attention button and the guest has not powered off since.
    removal_requested: bool,
}

impl RootPort {
    /// A port with an empty, powered-off slot. `port_number` goes into Link
    /// Capabilities; `slot_number` is the physical slot number pciehp names the slot by
    /// (give each port its own: Linux renames duplicates).
    pub fn new(
        port_number: u8,
        slot_number: u16,
        signal: Box<dyn HotplugSignal>,
    ) -> Result<Self, RootPortError> {
        if slot_number > MAX_SLOT_NUMBER {
            return Err(RootPortError::SlotNumberTooLarge(slot_number));
        }
        let mut s = Space::zeroed();

        let id = u32::from(ROOT_PORT_DEVICE) << 16 | u32::from(ROOT_PORT_VENDOR);
        s.define(0x00, 4, id, 0, 0);
        s.define(COMMAND, 2, 0, u32::from(COMMAND_WRITABLE), 0);
        s.define(
            STATUS,
            2,
            u32::from(STATUS_CAP_LIST),
            0,
            u32::from(STATUS_ERRORS),
        );
        s.define(CLASS_REVISION, 4, CLASS_PCI_BRIDGE, 0, 0);
        // Cache line size is read-write (no effect on PCIe); the latency timer reads 0.
        s.define(CACHE_LINE_SIZE, 1, 0, 0xff, 0);
        s.define(HEADER_TYPE, 1, HEADER_TYPE_BRIDGE, 0, 0);
        // No BARs at 0x10/0x14: they read 0, so sizing finds nothing.
        s.define(PRIMARY_BUS, 1, 0, 0xff, 0);
        s.define(SECONDARY_BUS, 1, 0, 0xff, 0);
        s.define(SUBORDINATE_BUS, 1, 0, 0xff, 0);
        // Windows start disabled (base above limit), as QEMU's reset leaves them: a
        // 0/0 pair would decode as a 4 KiB / 1 MiB window at address 0.
        let io = u32::from(IO_WINDOW_BITS);
        s.define(IO_BASE, 1, io, io, 0);
        s.define(IO_LIMIT, 1, 0, io, 0);
        s.define(SECONDARY_STATUS, 2, 0, 0, u32::from(STATUS_ERRORS));
        let mem = u32::from(MEMORY_WINDOW_BITS);
        s.define(MEMORY_BASE, 2, mem, mem, 0);
        s.define(MEMORY_LIMIT, 2, 0, mem, 0);
        let pref64 = u32::from(PREF_64BIT);
        s.define(PREF_BASE, 2, mem | pref64, mem, 0);
        s.define(PREF_LIMIT, 2, pref64, mem, 0);
        s.define(PREF_BASE_UPPER, 4, 0, 0xffff_ffff, 0);
        s.define(PREF_LIMIT_UPPER, 4, 0, 0xffff_ffff, 0);
        // I/O base/limit upper 16 bits (0x30): 16-bit decoding, read 0.
        s.define(CAP_POINTER, 1, PCIE_CAP as u32, 0, 0);
        // No expansion ROM (0x38). No INTx pin: the hot-plug interrupt is MSI only.
        s.define(INTERRUPT_LINE, 1, 0, 0xff, 0);
        s.define(BRIDGE_CONTROL, 2, 0, u32::from(BRIDGE_CONTROL_WRITABLE), 0);

        // PCI Express capability, version 2 (0x3c bytes: up to 0x7b).
        s.define(PCIE_CAP, 1, u32::from(CAP_ID_PCIE), 0, 0);
        s.define(PCIE_CAP + 1, 1, MSI_CAP as u32, 0, 0);
        s.define(EXP_FLAGS, 2, u32::from(EXP_FLAGS_VALUE), 0, 0);
        s.define(DEVCAP, 4, DEVCAP_RBER, 0, 0);
        s.define(DEVCTL, 2, 0, u32::from(DEVCTL_WRITABLE), 0);
        s.define(DEVSTA, 2, 0, 0, u32::from(DEVSTA_ERRORS));
        let lnkcap =
            LINK_SPEED_2_5GT | LINK_WIDTH_X1 | LNKCAP_DLLLARC | u32::from(port_number) << 24;
        s.define(LNKCAP, 4, lnkcap, 0, 0);
        s.define(LNKCTL, 2, 0, u32::from(LNKCTL_WRITABLE), 0);
        // Link training never shows (LT 0) and the width is always x1: pciehp's
        // `pciehp_check_link_status` fails a slot whose Negotiated Link Width reads 0.
        s.define(LNKSTA, 2, LINK_SPEED_2_5GT | LINK_WIDTH_X1, 0, 0);
        let sltcap = SLTCAP_ABP
            | SLTCAP_PCP
            | SLTCAP_AIP
            | SLTCAP_PIP
            | SLTCAP_HPC
            | SLTCAP_NCCS
            | u32::from(slot_number) << SLTCAP_PSN_SHIFT;
        s.define(SLTCAP, 4, sltcap, 0, 0);
        // An empty slot starts powered off with both indicators off (what pciehp's
        // `pcie_init` would otherwise do itself before it enables notifications).
        let sltctl = SLTCTL_PCC
            | Indicator::Off.bits() << SLTCTL_PIC_SHIFT
            | Indicator::Off.bits() << SLTCTL_AIC_SHIFT;
        s.define(SLTCTL, 2, u32::from(sltctl), u32::from(SLTCTL_WRITABLE), 0);
        s.define(SLTSTA, 2, 0, 0, u32::from(SLTSTA_EVENTS));
        s.define(RTCTL, 2, 0, u32::from(RTCTL_WRITABLE), 0);
        s.define(RTSTA, 4, 0, 0, RTSTA_PME_STATUS);
        // Device Capabilities/Control 2 and the slot 2 registers read 0: no optional
        // features (no ARI forwarding: passthrough hides ARI, docs/platform.md).
        s.define(LNKCAP2, 4, LNKCAP2_SPEEDS, 0, 0);

        // MSI, 64-bit, one vector (0x0e bytes: up to 0x8d), last in the list.
        s.define(MSI_CAP, 1, u32::from(cap_id::MSI), 0, 0);
        s.define(MSI_CAP + 1, 1, 0, 0, 0);
        s.define(
            MSI_CONTROL,
            2,
            u32::from(MSI_64BIT),
            u32::from(MSI_ENABLE),
            0,
        );
        s.define(MSI_ADDRESS_LO, 4, 0, 0xffff_fffc, 0);
        s.define(MSI_ADDRESS_HI, 4, 0, 0xffff_ffff, 0);
        s.define(MSI_DATA, 4, 0, 0xffff, 0);

        Ok(Self {
            space: s,
            signal,
            interrupt_asserted: false,
            events: VecDeque::new(),
            removal_requested: false,
        })
    }

    // ---- Firmware-style programming, before the guest runs ----

    /// Programs the bus numbers as firmware would, so that the guest keeps them and the
    /// ECAM buses the owner routes match what the guest uses.
    pub fn set_bus_numbers(
        &mut self,
        primary: u8,
        secondary: u8,
        subordinate: u8,
    ) -> Result<(), RootPortError> {
        if primary >= secondary || secondary > subordinate {
            return Err(RootPortError::BadBusNumbers {
                primary,
                secondary,
                subordinate,
            });
        }
        self.space.put(PRIMARY_BUS, 1, u32::from(primary));
        self.space.put(SECONDARY_BUS, 1, u32::from(secondary));
        self.space.put(SUBORDINATE_BUS, 1, u32::from(subordinate));
        Ok(())
    }

    /// Programs a window as firmware would (`None` disables it). This is how windows
    /// get sized for large BARs: Linux keeps a valid window it finds, while the windows
    /// it sizes itself for an empty hot-plug port are small (2 MiB by default,
    /// `pci=hpmmiosize=`/`hpmmioprefsize=`).
    pub fn set_window(
        &mut self,
        kind: WindowKind,
        window: Option<BridgeWindow>,
    ) -> Result<(), RootPortError> {
        let g = kind.granularity();
        if let Some(w) = window {
            let aligned = w.base % g == 0 && w.end % g == g - 1;
            if !aligned || w.end < w.base || w.end > kind.max_end() {
                return Err(RootPortError::BadWindow {
                    kind,
                    base: w.base,
                    end: w.end,
                    granularity: g,
                    max_end: kind.max_end(),
                });
            }
        }
        match (kind, window) {
            (WindowKind::Io, Some(w)) => {
                self.space.put(IO_BASE, 1, (w.base >> 8) as u32 & 0xf0);
                self.space.put(IO_LIMIT, 1, (w.end >> 8) as u32 & 0xf0);
            }
            (WindowKind::Io, None) => {
                self.space.put(IO_BASE, 1, u32::from(IO_WINDOW_BITS));
                self.space.put(IO_LIMIT, 1, 0);
            }
            (WindowKind::Memory, Some(w)) => {
                self.space
                    .put(MEMORY_BASE, 2, (w.base >> 16) as u32 & 0xfff0);
                self.space
                    .put(MEMORY_LIMIT, 2, (w.end >> 16) as u32 & 0xfff0);
            }
            (WindowKind::Memory, None) => {
                self.space
                    .put(MEMORY_BASE, 2, u32::from(MEMORY_WINDOW_BITS));
                self.space.put(MEMORY_LIMIT, 2, 0);
            }
            (WindowKind::Prefetchable, w) => {
                // Disabled the way Linux disables it: base 0xfff0_0000, limit 0xf_ffff.
                let (base, end) = w.map_or((0xfff0_0000, 0x000f_ffff), |w| (w.base, w.end));
                let low = |a: u64| ((a >> 16) as u32 & 0xfff0) | u32::from(PREF_64BIT);
                self.space.put(PREF_BASE, 2, low(base));
                self.space.put(PREF_LIMIT, 2, low(end));
                self.space.put(PREF_BASE_UPPER, 4, (base >> 32) as u32);
                self.space.put(PREF_LIMIT_UPPER, 4, (end >> 32) as u32);
            }
        }
        Ok(())
    }

    // ---- The slot, from the owner's side ----

    /// A card present from the start, before the guest runs: presence and link up, slot
    /// power and power indicator on, no changed bits and no interrupt (the guest finds
    /// the card by enumeration, as QEMU's cold-plugged devices).
    pub fn coldplug_card(&mut self) -> Result<(), SlotError> {
        if self.card_present() {
            return Err(SlotError::CardPresent);
        }
        self.set_card(true);
        let ctl = self.space.get16(SLTCTL) & !(SLTCTL_PCC | SLTCTL_PIC);
        self.space
            .put16(SLTCTL, ctl | Indicator::On.bits() << SLTCTL_PIC_SHIFT);
        Ok(())
    }

    /// Hot-adds a card: Presence Detect State and Link Active set, Presence Detect
    /// Changed and DLL State Changed raised, one MSI if the guest enabled either.
    ///
    /// The card's function 0 must already answer config reads on the secondary bus:
    /// pciehp powers the slot on ([`SlotEvent::PowerOn`]) and reads its vendor ID
    /// right away.
    pub fn insert_card(&mut self) -> Result<(), SlotError> {
        if self.card_present() {
            return Err(SlotError::CardPresent);
        }
        self.set_card(true);
        self.raise(SLTSTA_PDC | SLTSTA_DLLSC);
        Ok(())
    }

    /// Asks the guest to release the card: presses the attention button, as QEMU's
    /// unplug request does. pciehp blinks the power indicator, waits five seconds (a
    /// second press would cancel, so the port refuses one: [`SlotError::RemovalPending`]),
    /// removes the card's functions and powers the slot off ([`SlotEvent::PowerOff`]).
    pub fn request_removal(&mut self) -> Result<(), SlotError> {
        if !self.card_present() {
            return Err(SlotError::NoCard);
        }
        if !self.slot_powered() {
            return Err(SlotError::PoweredOff);
        }
        if self.removal_requested {
            return Err(SlotError::RemovalPending);
        }
        self.removal_requested = true;
        self.raise(SLTSTA_ABP);
        Ok(())
    }

    /// The card leaves the slot: presence and link down, Presence Detect Changed and DLL
    /// State Changed raised, one MSI if enabled. After [`SlotEvent::PowerOff`] pciehp
    /// ignores it (the slot is already off); on a powered slot it is a surprise removal,
    /// which pciehp also handles (it unbinds the driver of a card that is gone).
    pub fn remove_card(&mut self) -> Result<(), SlotError> {
        if !self.card_present() {
            return Err(SlotError::NoCard);
        }
        self.set_card(false);
        self.removal_requested = false;
        self.raise(SLTSTA_PDC | SLTSTA_DLLSC);
        Ok(())
    }

    /// Reports a power fault (Power Fault Detected). pciehp checks it when it powers a
    /// slot on (`board_added` gives up on a faulted slot), so this is how the owner
    /// refuses a power-on it cannot honour. pciehp does not enable the interrupt for it.
    pub fn report_power_fault(&mut self) {
        self.raise(SLTSTA_PFD);
    }

    /// Whether a card is in the slot (Presence Detect State).
    pub fn card_present(&self) -> bool {
        self.space.get16(SLTSTA) & SLTSTA_PDS != 0
    }

    /// Whether the link reports Data Link Layer Link Active (a card is present).
    pub fn link_active(&self) -> bool {
        self.space.get16(LNKSTA) & LNKSTA_DLLLA != 0
    }

    /// Whether the guest's Power Controller Control says the slot is on.
    pub fn slot_powered(&self) -> bool {
        self.space.get16(SLTCTL) & SLTCTL_PCC == 0
    }

    /// The power indicator as the guest set it.
    pub fn power_indicator(&self) -> Indicator {
        Indicator::from_bits(self.space.get16(SLTCTL) >> SLTCTL_PIC_SHIFT)
    }

    /// The attention indicator as the guest set it.
    pub fn attention_indicator(&self) -> Indicator {
        Indicator::from_bits(self.space.get16(SLTCTL) >> SLTCTL_AIC_SHIFT)
    }

    /// Whether an attention button request is waiting for the guest to power off.
    pub fn removal_requested(&self) -> bool {
        self.removal_requested
    }

    /// Whether the guest enabled hot-plug interrupts (pciehp is bound, not polling).
    pub fn hotplug_interrupt_enabled(&self) -> bool {
        self.space.get16(SLTCTL) & SLTCTL_HPIE != 0
    }

    /// The slot events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<SlotEvent> {
        self.events.drain(..).collect()
    }

    /// Whether the guest holds Secondary Bus Reset asserted right now (the event for
    /// each assertion is [`SlotEvent::SecondaryBusReset`]).
    pub fn secondary_bus_reset_asserted(&self) -> bool {
        self.space.get16(BRIDGE_CONTROL) & BRIDGE_CONTROL_BUS_RESET != 0
    }

    // ---- The bridge, from the owner's side ----

    /// The bus numbers as programmed.
    pub fn bus_numbers(&self) -> BusNumbers {
        BusNumbers {
            primary: self.space.get8(PRIMARY_BUS),
            secondary: self.space.get8(SECONDARY_BUS),
            subordinate: self.space.get8(SUBORDINATE_BUS),
        }
    }

    /// The I/O window as programmed, or `None` while its limit is below its base.
    /// Forwarding also needs [`Self::io_enabled`].
    pub fn io_window(&self) -> Option<BridgeWindow> {
        let base = u64::from(self.space.get8(IO_BASE) & IO_WINDOW_BITS) << 8;
        let end = u64::from(self.space.get8(IO_LIMIT) & IO_WINDOW_BITS) << 8 | 0xfff;
        window(base, end)
    }

    /// The memory window as programmed, or `None` while its limit is below its base.
    /// Forwarding also needs [`Self::memory_enabled`].
    pub fn memory_window(&self) -> Option<BridgeWindow> {
        let base = u64::from(self.space.get16(MEMORY_BASE) & MEMORY_WINDOW_BITS) << 16;
        let end = u64::from(self.space.get16(MEMORY_LIMIT) & MEMORY_WINDOW_BITS) << 16 | 0xf_ffff;
        window(base, end)
    }

    /// The 64-bit prefetchable window as programmed, or `None` while its limit is below
    /// its base. Forwarding also needs [`Self::memory_enabled`].
    pub fn prefetchable_window(&self) -> Option<BridgeWindow> {
        let low = |off| u64::from(self.space.get16(off) & MEMORY_WINDOW_BITS) << 16;
        let high = |off| u64::from(self.space.get(off, 4)) << 32;
        let base = high(PREF_BASE_UPPER) | low(PREF_BASE);
        let end = high(PREF_LIMIT_UPPER) | low(PREF_LIMIT) | 0xf_ffff;
        window(base, end)
    }

    /// Command register I/O space enable: the port forwards I/O in its window.
    pub fn io_enabled(&self) -> bool {
        self.space.get16(COMMAND) & COMMAND_IO != 0
    }

    /// Command register memory space enable: the port forwards memory in its windows.
    pub fn memory_enabled(&self) -> bool {
        self.space.get16(COMMAND) & COMMAND_MEMORY != 0
    }

    /// Command register bus master enable: the port forwards the card's DMA and MSIs
    /// upstream, and may send its own MSI.
    pub fn bus_master_enabled(&self) -> bool {
        self.space.get16(COMMAND) & COMMAND_MASTER != 0
    }

    // ---- Internals ----

    fn set_card(&mut self, present: bool) {
        self.space.update16(SLTSTA, SLTSTA_PDS, present);
        self.space.update16(LNKSTA, LNKSTA_DLLLA, present);
    }

    /// Sets slot event bits from the device side and re-evaluates the interrupt.
    fn raise(&mut self, events: u16) {
        self.space.update16(SLTSTA, events & SLTSTA_EVENTS, true);
        self.update_interrupt();
    }

    fn push_event(&mut self, event: SlotEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The hot-plug interrupt condition: some enabled event pending, Hot-Plug Interrupt
    /// Enable set, and MSI and bus mastering on (an MSI is a memory write the port
    /// sends upstream). Turning any of the last three on while an event is pending
    /// sends the MSI then, which the spec permits (sec 6.7.3.4) and which keeps an event
    /// from being lost to a guest that enables MSI late; pciehp treats an MSI that finds
    /// nothing as spurious.
    fn interrupt_condition(&self) -> bool {
        let ctl = self.space.get16(SLTCTL);
        let pending = self.space.get16(SLTSTA) & enabled_events(ctl);
        pending != 0
            && ctl & SLTCTL_HPIE != 0
            && self.space.get16(MSI_CONTROL) & MSI_ENABLE != 0
            && self.bus_master_enabled()
    }

    fn update_interrupt(&mut self) {
        let now = self.interrupt_condition();
        if now && !self.interrupt_asserted {
            self.signal.signal(self.msi_message());
        }
        self.interrupt_asserted = now;
    }

    fn msi_message(&self) -> MsiMessage {
        MsiMessage {
            address_lo: self.space.get(MSI_ADDRESS_LO, 4),
            address_hi: self.space.get(MSI_ADDRESS_HI, 4),
            data: u32::from(self.space.get16(MSI_DATA)),
        }
    }

    /// The owner-visible consequences of a guest write that changed `old` to `new` in
    /// dword `reg`.
    fn after_write(&mut self, reg: usize, old: u32, new: u32) {
        if reg == SLTCTL / 4 {
            let (old, new) = (old as u16, new as u16);
            match (old & SLTCTL_PCC != 0, new & SLTCTL_PCC != 0) {
                (true, false) => self.push_event(SlotEvent::PowerOn),
                (false, true) => {
                    self.removal_requested = false;
                    self.push_event(SlotEvent::PowerOff);
                }
                _ => {}
            }
            if (old ^ new) & (SLTCTL_PIC | SLTCTL_AIC) != 0 {
                self.push_event(SlotEvent::Indicators {
                    power: self.power_indicator(),
                    attention: self.attention_indicator(),
                });
            }
        }
        if reg == BRIDGE_CONTROL / 4 {
            let bit = u32::from(BRIDGE_CONTROL_BUS_RESET) << 16;
            if old & bit == 0 && new & bit != 0 {
                self.push_event(SlotEvent::SecondaryBusReset);
            }
        }
        // Slot Control/Status, MSI control and the command register all feed the
        // interrupt condition; re-evaluating it after every write is cheap and cannot
        // miss one of them.
        self.update_interrupt();
    }
}

/// The Slot Status event bits whose Slot Control enable is set.
fn enabled_events(ctl: u16) -> u16 {
    [
        (SLTCTL_ABPE, SLTSTA_ABP),
        (SLTCTL_PFDE, SLTSTA_PFD),
        (SLTCTL_MRLSCE, SLTSTA_MRLSC),
        (SLTCTL_PDCE, SLTSTA_PDC),
        (SLTCTL_CCIE, SLTSTA_CC),
        (SLTCTL_DLLSCE, SLTSTA_DLLSC),
    ]
    .iter()
    .filter(|(enable, _)| ctl & enable != 0)
    .fold(0, |m, (_, status)| m | status)
}

fn window(base: u64, end: u64) -> Option<BridgeWindow> {
    (end >= base).then_some(BridgeWindow { base, end })
}

impl PciDevice for RootPort {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        // Past the stored header space (and past 4 KiB, which ECAM never sends): zero,
        // which is also the empty extended capability list at 0x100.
        self.space.regs.get(reg_idx).copied().unwrap_or(0)
    }

    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        let Ok(offset) = usize::try_from(offset) else {
            return;
        };
        let inside = offset.checked_add(data.len()).is_some_and(|end| end <= 4);
        if !matches!(data.len(), 1 | 2 | 4) || !inside {
            return;
        }
        let Some(&old) = self.space.regs.get(reg_idx) else {
            return; // the extended space: nothing there is writable
        };
        let lanes = write_lanes(offset, data.len());
        let value = merge_write(0, offset, data);
        let writable = self.space.wmask[reg_idx] & lanes;
        let clear = self.space.w1c[reg_idx] & lanes & value;
        let new = ((old & !writable) | (value & writable)) & !clear;
        self.space.regs[reg_idx] = new;
        self.after_write(reg_idx, old, new);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::pci::caps::{walk_extended, walk_standard};
    use crate::pci::ecam::EcamWindow;
    use crate::pci::host_bridge::PciRoot;
    use crate::pci::testing::MSG;

    /// Dwords of a PCIe function's config space (4 KiB), the largest index ECAM delivers.
    const CONFIG_DWORDS: usize = 1024;

    /// Records every MSI the port sends.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<MsiMessage>>>);

    impl HotplugSignal for Recorder {
        fn signal(&self, msg: MsiMessage) {
            self.0.lock().unwrap().push(msg);
        }
    }

    impl Recorder {
        fn count(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    fn port() -> (RootPort, Recorder) {
        let rec = Recorder::default();
        let p = RootPort::new(3, 7, Box::new(rec.clone())).unwrap();
        (p, rec)
    }

    fn read(p: &mut RootPort, offset: usize, len: usize) -> u32 {
        let v = p.read_config_register(offset / 4);
        let shift = (offset % 4) * 8;
        let mask = if len == 4 {
            u32::MAX
        } else {
            (1u32 << (len * 8)) - 1
        };
        (v >> shift) & mask
    }

    fn write(p: &mut RootPort, offset: usize, len: usize, value: u32) {
        let bytes = value.to_le_bytes();
        p.write_config_register(offset / 4, (offset % 4) as u64, &bytes[..len]);
    }

    /// What pciehp and portdrv do before a hot-plug can be signalled: MSI programmed and
    /// enabled, bus mastering on, and `pcie_enable_notification`'s Slot Control bits.
    fn guest_enables_hotplug(p: &mut RootPort) {
        write(p, MSI_ADDRESS_LO, 4, MSG.address_lo);
        write(p, MSI_ADDRESS_HI, 4, MSG.address_hi);
        write(p, MSI_DATA, 2, MSG.data);
        write(p, MSI_CONTROL, 2, u32::from(MSI_ENABLE));
        write(p, COMMAND, 2, u32::from(COMMAND_MEMORY | COMMAND_MASTER));
        // pcie_init clears every event bit first.
        write(p, SLTSTA, 2, 0x1ff);
        let ctl = read(p, SLTCTL, 2) as u16;
        let ctl = ctl | SLTCTL_DLLSCE | SLTCTL_ABPE | SLTCTL_HPIE;
        write(p, SLTCTL, 2, u32::from(ctl));
    }

    /// pciehp's `pciehp_power_on_slot`: Power Controller Control to on.
    fn power_on(p: &mut RootPort) {
        let ctl = read(p, SLTCTL, 2) & !u32::from(SLTCTL_PCC);
        write(p, SLTCTL, 2, ctl);
    }

    fn slot_status(p: &mut RootPort) -> u16 {
        read(p, SLTSTA, 2) as u16
    }

    fn snapshot(p: &mut RootPort) -> Vec<u8> {
        (0..CONFIG_DWORDS)
            .flat_map(|i| p.read_config_register(i).to_le_bytes())
            .collect()
    }

    #[test]
    fn header_is_a_type_1_pci_bridge_from_red_hat() {
        let (mut p, _) = port();
        assert_eq!(read(&mut p, 0, 2), 0x1b36);
        assert_eq!(read(&mut p, 2, 2), 0x000c);
        assert_eq!(read(&mut p, 0x08, 4), 0x0604_0000, "class 06/04/00, rev 0");
        assert_eq!(
            read(&mut p, HEADER_TYPE, 1),
            0x01,
            "type 1, single function"
        );
        assert_eq!(read(&mut p, STATUS, 2), u32::from(STATUS_CAP_LIST));
        assert_eq!(read(&mut p, CAP_POINTER, 1), 0x40);
        assert_eq!(read(&mut p, 0x3d, 1), 0, "no INTx pin");
        // Identity and class ignore writes.
        write(&mut p, 0, 4, 0);
        write(&mut p, 0x08, 4, 0xffff_ffff);
        write(&mut p, HEADER_TYPE, 1, 0x80);
        write(&mut p, CAP_POINTER, 1, 0x50);
        assert_eq!(read(&mut p, 0, 4), 0x000c_1b36);
        assert_eq!(read(&mut p, 0x08, 4), 0x0604_0000);
        assert_eq!(read(&mut p, HEADER_TYPE, 1), 0x01);
        assert_eq!(read(&mut p, CAP_POINTER, 1), 0x40);
        // No BARs, no expansion ROM.
        for off in [0x10, 0x14, 0x38] {
            write(&mut p, off, 4, 0xffff_ffff);
            assert_eq!(read(&mut p, off, 4), 0, "{off:#x}");
        }
    }

    #[test]
    fn bus_numbers_are_writable_and_secondary_latency_reads_zero() {
        let (mut p, _) = port();
        write(&mut p, PRIMARY_BUS, 4, 0xffff_ffff);
        assert_eq!(read(&mut p, PRIMARY_BUS, 4), 0x00ff_ffff);
        write(&mut p, PRIMARY_BUS, 4, 0x0003_0100);
        write(&mut p, SUBORDINATE_BUS, 1, 0x04);
        assert_eq!(
            p.bus_numbers(),
            BusNumbers {
                primary: 0,
                secondary: 1,
                subordinate: 4
            }
        );
        assert_eq!(p.bus_numbers().downstream(), Some(1..=4));
        write(&mut p, SUBORDINATE_BUS, 1, 0x00);
        assert_eq!(
            p.bus_numbers().downstream(),
            None,
            "subordinate below secondary"
        );
        p.set_bus_numbers(0, 2, 2).unwrap();
        assert_eq!(read(&mut p, PRIMARY_BUS, 4), 0x0002_0200);
        assert!(matches!(
            p.set_bus_numbers(2, 2, 3),
            Err(RootPortError::BadBusNumbers { .. })
        ));
        assert!(p.set_bus_numbers(0, 3, 2).is_err());
    }

    #[test]
    fn windows_start_disabled_and_decode_as_the_guest_programs_them() {
        let (mut p, _) = port();
        assert_eq!(p.io_window(), None);
        assert_eq!(p.memory_window(), None);
        assert_eq!(p.prefetchable_window(), None);
        assert_eq!(read(&mut p, PREF_BASE, 2) & 0xf, 1, "64-bit prefetchable");

        // I/O 0xc000-0xdfff: 16-bit decoding, low nibbles read-only 0.
        write(&mut p, IO_BASE, 2, 0xdfc3);
        assert_eq!(read(&mut p, IO_BASE, 2), 0xd0c0);
        assert_eq!(
            p.io_window(),
            Some(BridgeWindow {
                base: 0xc000,
                end: 0xdfff
            })
        );
        assert_eq!(read(&mut p, 0x30, 4), 0, "no 32-bit I/O");
        write(&mut p, 0x30, 4, 0xffff_ffff);
        assert_eq!(read(&mut p, 0x30, 4), 0);

        // Memory 0xc010_0000-0xc02f_ffff.
        write(&mut p, MEMORY_BASE, 4, 0xc02f_c01f);
        assert_eq!(read(&mut p, MEMORY_BASE, 4), 0xc020_c010);
        let w = p.memory_window().unwrap();
        assert_eq!(
            (w.base, w.end, w.size()),
            (0xc010_0000, 0xc02f_ffff, 0x20_0000)
        );
        assert!(w.contains(0xc010_0000, 0x20_0000));
        assert!(!w.contains(0xc010_0000, 0x20_0001));
        assert!(!w.contains(0xc000_0000, 1));
        assert!(!w.contains(0xc010_0000, 0));

        // Prefetchable 0x80_0000_0000-0x87_ffff_ffff (32 GiB) with the upper registers.
        write(&mut p, PREF_BASE, 4, 0xfff0_0000);
        write(&mut p, PREF_BASE_UPPER, 4, 0x80);
        write(&mut p, PREF_LIMIT_UPPER, 4, 0x87);
        assert_eq!(read(&mut p, PREF_BASE, 4), 0xfff1_0001, "type bits stay");
        let w = p.prefetchable_window().unwrap();
        assert_eq!((w.base, w.end), (0x80_0000_0000, 0x87_ffff_ffff));
        assert_eq!(w.size(), 32 << 30);

        // Limit below base: disabled.
        write(&mut p, MEMORY_BASE, 4, 0xc000_c010);
        assert_eq!(p.memory_window(), None);
        write(&mut p, PREF_LIMIT_UPPER, 4, 0x7f);
        assert_eq!(p.prefetchable_window(), None);
    }

    #[test]
    fn firmware_windows_are_encoded_and_checked() {
        let (mut p, _) = port();
        let io = BridgeWindow {
            base: 0x1000,
            end: 0x1fff,
        };
        let mem = BridgeWindow {
            base: 0xc000_0000,
            end: 0xc7ff_ffff,
        };
        let pref = BridgeWindow {
            base: 0x100_0000_0000,
            end: 0x13f_ffff_ffff,
        };
        p.set_window(WindowKind::Io, Some(io)).unwrap();
        p.set_window(WindowKind::Memory, Some(mem)).unwrap();
        p.set_window(WindowKind::Prefetchable, Some(pref)).unwrap();
        assert_eq!(p.io_window(), Some(io));
        assert_eq!(p.memory_window(), Some(mem));
        assert_eq!(p.prefetchable_window(), Some(pref));
        assert_eq!(read(&mut p, PREF_BASE, 4) & 0x000f_000f, 0x0001_0001);

        let bad = [
            (WindowKind::Io, 0x1800, 0x1fff),
            (WindowKind::Io, 0x1000, 0x1_0fff),
            (WindowKind::Memory, 0xc000_0000, 0xc00f_fffe),
            (WindowKind::Memory, 0xfff0_0000, 0x1_000f_ffff),
            (WindowKind::Prefetchable, 0x20_0000, 0x1f_ffff),
        ];
        for (kind, base, end) in bad {
            let r = p.set_window(kind, Some(BridgeWindow { base, end }));
            assert!(
                matches!(r, Err(RootPortError::BadWindow { .. })),
                "{kind:?}"
            );
        }
        assert_eq!(
            p.memory_window(),
            Some(mem),
            "a refused window changes nothing"
        );

        for kind in [WindowKind::Io, WindowKind::Memory, WindowKind::Prefetchable] {
            p.set_window(kind, None).unwrap();
        }
        assert_eq!(
            (p.io_window(), p.memory_window(), p.prefetchable_window()),
            (None, None, None)
        );
    }

    #[test]
    fn capability_list_is_pcie_then_msi_and_the_extended_list_is_empty() {
        let (mut p, _) = port();
        let cfg = snapshot(&mut p);
        let caps: Vec<_> = walk_standard(&cfg)
            .iter()
            .map(|c| (c.id, c.offset))
            .collect();
        assert_eq!(caps, vec![(CAP_ID_PCIE, 0x40), (cap_id::MSI, 0x80)]);
        assert!(walk_extended(&cfg).is_empty());
        assert!(
            cfg[0x100..].iter().all(|&b| b == 0),
            "extended space reads 0"
        );

        let flags = read(&mut p, EXP_FLAGS, 2);
        assert_eq!(flags & 0xf, 2, "capability version 2");
        assert_eq!((flags >> 4) & 0xf, 4, "Root Port");
        assert_ne!(flags & (1 << 8), 0, "slot implemented");

        let lnkcap = read(&mut p, LNKCAP, 4);
        assert_ne!(lnkcap & LNKCAP_DLLLARC, 0);
        assert_eq!(lnkcap >> 24, 3, "port number");
        assert_eq!(read(&mut p, LNKSTA, 2) & 0x3ff, 0x11, "2.5 GT/s x1");

        let sltcap = read(&mut p, SLTCAP, 4);
        for bit in [SLTCAP_ABP, SLTCAP_PCP, SLTCAP_AIP, SLTCAP_PIP, SLTCAP_HPC] {
            assert_ne!(sltcap & bit, 0, "{bit:#x}");
        }
        assert_ne!(sltcap & SLTCAP_NCCS, 0, "no command completed support");
        assert_eq!(
            sltcap & (1 << 2 | 1 << 5 | 1 << 17),
            0,
            "no MRL, surprise, EI"
        );
        assert_eq!(sltcap >> SLTCAP_PSN_SHIFT, 7, "physical slot number");

        let msi = read(&mut p, MSI_CONTROL, 2) as u16;
        assert_eq!(msi, MSI_64BIT, "64-bit, one vector, disabled");
        assert!(matches!(
            RootPort::new(0, 0x2000, Box::new(Recorder::default())),
            Err(RootPortError::SlotNumberTooLarge(0x2000))
        ));
    }

    #[test]
    fn reads_and_writes_through_ecam_and_mechanism_1() {
        let (p, _) = port();
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let p = Arc::new(Mutex::new(p));
        root.lock().unwrap().add_device(1, p.clone()).unwrap();
        let mut ecam = EcamWindow::new(root.clone());
        let at = |off: u64| (1 << 15) | off;
        let mut b = [0u8; 4];
        crate::bus::BusDevice::read(&mut ecam, 0, at(0), &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x000c_1b36);
        crate::bus::BusDevice::read(&mut ecam, 0, at(0x100), &mut b);
        assert_eq!(b, [0; 4], "extended list empty");
        crate::bus::BusDevice::read(&mut ecam, 0, at(0xffc), &mut b);
        assert_eq!(b, [0; 4]);
        crate::bus::BusDevice::write(&mut ecam, 0, at(0x19), &[5]);
        crate::bus::BusDevice::write(&mut ecam, 0, at(0x800), &[0xff; 4]);
        assert_eq!(p.lock().unwrap().bus_numbers().secondary, 5);
        assert_eq!(
            root.lock().unwrap().config_read(0, 1, 0, 0x18 / 4),
            0x0000_0500
        );

        // Mechanism #1: CONFIG_ADDRESS selects 00:01.0 register 0x18, CONFIG_DATA + 1 is
        // the secondary bus byte.
        let mut r = root.lock().unwrap();
        let select = 0x8000_0000u32 | (1 << 11) | 0x18;
        crate::bus::BusDevice::write(&mut *r, 0, 0, &select.to_le_bytes());
        crate::bus::BusDevice::write(&mut *r, 0, 5, &[6]);
        let mut byte = [0u8; 1];
        crate::bus::BusDevice::read(&mut *r, 0, 5, &mut byte);
        assert_eq!(byte, [6]);
    }

    #[test]
    fn insert_sets_presence_changed_bits_and_link_and_signals_one_msi() {
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        assert!(!p.card_present() && !p.link_active());
        p.insert_card().unwrap();
        let sta = slot_status(&mut p);
        assert_eq!(sta, SLTSTA_PDS | SLTSTA_PDC | SLTSTA_DLLSC);
        assert_ne!(read(&mut p, LNKSTA, 2) as u16 & LNKSTA_DLLLA, 0);
        assert!(p.card_present() && p.link_active());
        assert_eq!(*rec.0.lock().unwrap(), vec![MSG]);
        assert_eq!(p.insert_card(), Err(SlotError::CardPresent));
        assert_eq!(rec.count(), 1);
    }

    #[test]
    fn no_msi_while_hotplug_interrupts_or_msi_or_bus_master_are_off() {
        // Hot-Plug Interrupt Enable clear.
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        let ctl = read(&mut p, SLTCTL, 2) & !u32::from(SLTCTL_HPIE);
        write(&mut p, SLTCTL, 2, ctl);
        p.insert_card().unwrap();
        assert_eq!(rec.count(), 0);
        // Enabling it with the event pending sends the MSI then (sec 6.7.3.4, optional).
        write(&mut p, SLTCTL, 2, ctl | u32::from(SLTCTL_HPIE));
        assert_eq!(rec.count(), 1);

        // MSI disabled.
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        write(&mut p, MSI_CONTROL, 2, 0);
        p.insert_card().unwrap();
        assert_eq!(rec.count(), 0);
        write(&mut p, MSI_CONTROL, 2, u32::from(MSI_ENABLE));
        assert_eq!(rec.count(), 1);

        // Bus mastering off.
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        write(&mut p, COMMAND, 2, u32::from(COMMAND_MEMORY));
        p.insert_card().unwrap();
        assert_eq!(rec.count(), 0);

        // The event's own enable clear: DLLSC and PDC pending, neither enabled.
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        let ctl = read(&mut p, SLTCTL, 2) & !u32::from(SLTCTL_DLLSCE | SLTCTL_PDCE);
        write(&mut p, SLTCTL, 2, ctl);
        p.insert_card().unwrap();
        assert_eq!(rec.count(), 0);
        assert_eq!(
            slot_status(&mut p) & (SLTSTA_PDC | SLTSTA_DLLSC),
            SLTSTA_PDC | SLTSTA_DLLSC
        );
    }

    #[test]
    fn status_event_bits_are_write_1_to_clear() {
        let (mut p, _) = port();
        guest_enables_hotplug(&mut p);
        p.insert_card().unwrap();
        // Writing 0 clears nothing.
        write(&mut p, SLTSTA, 2, 0);
        assert_eq!(slot_status(&mut p), SLTSTA_PDS | SLTSTA_PDC | SLTSTA_DLLSC);
        // Writing 1 to one bit clears that bit only; PDS is read-only.
        write(&mut p, SLTSTA, 2, u32::from(SLTSTA_DLLSC | SLTSTA_PDS));
        assert_eq!(slot_status(&mut p), SLTSTA_PDS | SLTSTA_PDC);
        // A byte write to the low byte clears PDC.
        write(&mut p, SLTSTA, 1, u32::from(SLTSTA_PDC));
        assert_eq!(slot_status(&mut p), SLTSTA_PDS);
        // A dword write to Slot Control that keeps its value clears status bits too.
        power_on(&mut p);
        p.request_removal().unwrap();
        let ctl = read(&mut p, SLTCTL, 2);
        write(&mut p, SLTCTL, 4, ctl | u32::from(SLTSTA_ABP) << 16);
        assert_eq!(slot_status(&mut p), SLTSTA_PDS);
        assert_eq!(read(&mut p, SLTCTL, 2), ctl);
    }

    #[test]
    fn msi_is_resent_only_after_the_guest_clears_every_pending_event() {
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        let ctl = read(&mut p, SLTCTL, 2) | u32::from(SLTCTL_PFDE);
        write(&mut p, SLTCTL, 2, ctl);
        p.insert_card().unwrap();
        power_on(&mut p);
        assert_eq!(rec.count(), 1);
        // Another event while the first is pending: no second MSI.
        p.report_power_fault();
        assert_eq!(rec.count(), 1);
        // Clearing part of it (pciehp's ISR clears what it read) keeps the condition.
        write(&mut p, SLTSTA, 2, u32::from(SLTSTA_PDC | SLTSTA_DLLSC));
        assert_eq!(rec.count(), 1);
        assert_eq!(slot_status(&mut p), SLTSTA_PDS | SLTSTA_PFD);
        write(&mut p, SLTSTA, 2, u32::from(SLTSTA_PFD));
        // Nothing pending now: the next event is a new edge.
        p.request_removal().unwrap();
        assert_eq!(rec.count(), 2);
        // A pending but disabled event does not hold the condition up.
        write(&mut p, SLTSTA, 2, u32::from(SLTSTA_ABP));
        let ctl = read(&mut p, SLTCTL, 2) & !u32::from(SLTCTL_PFDE);
        write(&mut p, SLTCTL, 2, ctl);
        p.report_power_fault();
        assert_eq!(rec.count(), 2, "PFDE off");
        p.remove_card().unwrap();
        assert_eq!(rec.count(), 3);
    }

    #[test]
    fn the_msi_carries_the_guests_message() {
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        write(&mut p, MSI_ADDRESS_LO, 4, 0xfee0_1003);
        write(&mut p, MSI_ADDRESS_HI, 4, 0x1);
        write(&mut p, MSI_DATA, 4, 0xdead_4041);
        assert_eq!(
            read(&mut p, MSI_ADDRESS_LO, 4),
            0xfee0_1000,
            "dword aligned"
        );
        assert_eq!(
            read(&mut p, MSI_DATA, 4),
            0x4041,
            "no extended message data"
        );
        p.insert_card().unwrap();
        let sent = rec.0.lock().unwrap().clone();
        assert_eq!(
            sent,
            vec![MsiMessage {
                address_lo: 0xfee0_1000,
                address_hi: 1,
                data: 0x4041
            }]
        );
        // Multiple Message Enable stays 0: one vector.
        write(&mut p, MSI_CONTROL, 2, 0xffff);
        assert_eq!(read(&mut p, MSI_CONTROL, 2) as u16, MSI_64BIT | MSI_ENABLE);
    }

    #[test]
    fn attention_button_requests_removal_once() {
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        assert_eq!(p.request_removal(), Err(SlotError::NoCard));
        p.insert_card().unwrap();
        write(&mut p, SLTSTA, 2, 0x1ff);
        // The guest has not powered the slot on yet: a press would power it on.
        assert_eq!(p.request_removal(), Err(SlotError::PoweredOff));
        power_on(&mut p);
        let before = rec.count();
        p.request_removal().unwrap();
        assert_eq!(slot_status(&mut p), SLTSTA_PDS | SLTSTA_ABP);
        assert_eq!(rec.count(), before + 1);
        assert!(p.removal_requested());
        write(&mut p, SLTSTA, 2, u32::from(SLTSTA_ABP));
        assert_eq!(p.request_removal(), Err(SlotError::RemovalPending));
        assert_eq!(rec.count(), before + 1);
    }

    #[test]
    fn pciehp_add_and_remove_sequence_reports_power_events() {
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        assert!(!p.slot_powered());
        assert_eq!(p.power_indicator(), Indicator::Off);
        p.insert_card().unwrap();
        write(&mut p, SLTSTA, 2, u32::from(SLTSTA_PDC | SLTSTA_DLLSC));

        // board_added: power on, then the power indicator blinks, then on.
        let ctl = read(&mut p, SLTCTL, 2) as u16;
        write(&mut p, SLTCTL, 2, u32::from(ctl & !SLTCTL_PCC));
        let ctl = read(&mut p, SLTCTL, 2) as u16 & !SLTCTL_PIC;
        write(&mut p, SLTCTL, 2, u32::from(ctl | 0x2 << SLTCTL_PIC_SHIFT));
        write(&mut p, SLTCTL, 2, u32::from(ctl | 0x1 << SLTCTL_PIC_SHIFT));
        assert!(p.slot_powered());
        assert_eq!(p.power_indicator(), Indicator::On);
        let on = |power| SlotEvent::Indicators {
            power,
            attention: Indicator::Off,
        };
        assert_eq!(
            p.take_events(),
            vec![SlotEvent::PowerOn, on(Indicator::Blink), on(Indicator::On)]
        );
        assert!(p.take_events().is_empty(), "drained");

        // The owner asks; pciehp blinks, unconfigures, powers off, indicator off.
        p.request_removal().unwrap();
        write(&mut p, SLTSTA, 2, u32::from(SLTSTA_ABP));
        let ctl = read(&mut p, SLTCTL, 2) as u16 & !SLTCTL_PIC;
        write(&mut p, SLTCTL, 2, u32::from(ctl | 0x2 << SLTCTL_PIC_SHIFT));
        let ctl = read(&mut p, SLTCTL, 2) as u16;
        write(&mut p, SLTCTL, 2, u32::from(ctl | SLTCTL_PCC));
        assert!(!p.removal_requested());
        let ctl = read(&mut p, SLTCTL, 2) as u16;
        write(&mut p, SLTCTL, 2, u32::from(ctl | SLTCTL_PIC));
        assert_eq!(
            p.take_events(),
            vec![
                on(Indicator::Blink),
                SlotEvent::PowerOff,
                on(Indicator::Off)
            ]
        );

        // The owner detaches the card and takes it out of the slot.
        let before = rec.count();
        p.remove_card().unwrap();
        assert!(!p.card_present() && !p.link_active());
        assert_eq!(slot_status(&mut p), SLTSTA_PDC | SLTSTA_DLLSC);
        assert_eq!(rec.count(), before + 1);
        assert_eq!(p.remove_card(), Err(SlotError::NoCard));
        // Rewriting the same power state is no event.
        let ctl = read(&mut p, SLTCTL, 2);
        write(&mut p, SLTCTL, 2, ctl);
        assert!(p.take_events().is_empty());
    }

    #[test]
    fn coldplugged_card_is_present_and_powered_without_an_event() {
        let (mut p, rec) = port();
        p.coldplug_card().unwrap();
        guest_enables_hotplug(&mut p);
        assert!(p.card_present() && p.link_active() && p.slot_powered());
        assert_eq!(p.power_indicator(), Indicator::On);
        assert_eq!(slot_status(&mut p), SLTSTA_PDS);
        assert_eq!(rec.count(), 0);
        assert!(p.take_events().is_empty());
        assert_eq!(p.coldplug_card(), Err(SlotError::CardPresent));
        p.request_removal().unwrap();
        assert_eq!(rec.count(), 1);
    }

    #[test]
    fn no_command_completed_support_means_no_cc_bit_and_no_cc_interrupt() {
        let (mut p, rec) = port();
        guest_enables_hotplug(&mut p);
        // pciehp would set CCIE only without NCCS; a guest that tries finds it read-only.
        let ctl = read(&mut p, SLTCTL, 2);
        write(
            &mut p,
            SLTCTL,
            2,
            ctl | u32::from(SLTCTL_CCIE | SLTCTL_MRLSCE),
        );
        assert_eq!(read(&mut p, SLTCTL, 2), ctl);
        for v in [
            ctl ^ u32::from(SLTCTL_PIC),
            ctl,
            ctl ^ u32::from(SLTCTL_PCC),
        ] {
            write(&mut p, SLTCTL, 2, v);
            assert_eq!(slot_status(&mut p) & SLTSTA_CC, 0);
        }
        assert_eq!(rec.count(), 0, "Slot Control writes raise nothing");
    }

    #[test]
    fn secondary_bus_reset_is_an_event_per_assertion() {
        let (mut p, _) = port();
        write(&mut p, BRIDGE_CONTROL, 2, 0xffff);
        assert_eq!(
            read(&mut p, BRIDGE_CONTROL, 2) as u16,
            BRIDGE_CONTROL_WRITABLE
        );
        assert!(p.secondary_bus_reset_asserted());
        write(&mut p, BRIDGE_CONTROL, 2, 0xffff); // still asserted: no new event
        write(&mut p, BRIDGE_CONTROL, 2, 0);
        assert!(!p.secondary_bus_reset_asserted());
        write(
            &mut p,
            0x3c,
            4,
            u32::from(BRIDGE_CONTROL_BUS_RESET) << 16 | 0x0b,
        );
        assert_eq!(read(&mut p, INTERRUPT_LINE, 1), 0x0b);
        assert_eq!(
            p.take_events(),
            vec![SlotEvent::SecondaryBusReset, SlotEvent::SecondaryBusReset]
        );
    }

    #[test]
    fn all_ones_everywhere_sets_only_writable_bits() {
        let (mut p, rec) = port();
        for reg in 0..CONFIG_DWORDS {
            p.write_config_register(reg, 0, &[0xff; 4]);
        }
        let expect: &[(usize, usize, u32)] = &[
            (0x00, 4, 0x000c_1b36),
            (COMMAND, 2, u32::from(COMMAND_WRITABLE)),
            (STATUS, 2, u32::from(STATUS_CAP_LIST)),
            (0x0c, 4, 0x0001_00ff),
            (0x18, 4, 0x00ff_ffff),
            (0x1c, 4, 0x0000_f0f0),
            (0x20, 4, 0xfff0_fff0),
            (0x24, 4, 0xfff1_fff1),
            (0x28, 4, 0xffff_ffff),
            (0x2c, 4, 0xffff_ffff),
            (0x30, 4, 0),
            (0x34, 4, 0x40),
            (0x3c, 4, u32::from(BRIDGE_CONTROL_WRITABLE) << 16 | 0xff),
            (PCIE_CAP, 4, 0x0142_8010),
            (DEVCAP, 4, DEVCAP_RBER),
            (DEVCTL, 4, u32::from(DEVCTL_WRITABLE)),
            (LNKCAP, 4, 0x0310_0011),
            (LNKCTL, 4, 0x0011_0000 | u32::from(LNKCTL_WRITABLE)),
            (SLTCAP, 4, 0x0004_005b | 7 << 19),
            (SLTCTL, 4, u32::from(SLTCTL_WRITABLE)),
            (RTCTL, 4, u32::from(RTCTL_WRITABLE)),
            (RTSTA, 4, 0),
            (PCIE_CAP + 0x24, 4, 0),
            (PCIE_CAP + 0x28, 4, 0),
            (LNKCAP2, 4, LNKCAP2_SPEEDS),
            (PCIE_CAP + 0x30, 4, 0),
            (PCIE_CAP + 0x34, 4, 0),
            (PCIE_CAP + 0x38, 4, 0),
            (0x7c, 4, 0),
            (MSI_CAP, 4, u32::from(MSI_64BIT | MSI_ENABLE) << 16 | 0x05),
            (MSI_ADDRESS_LO, 4, 0xffff_fffc),
            (MSI_ADDRESS_HI, 4, 0xffff_ffff),
            (MSI_DATA, 4, 0xffff),
        ];
        for &(off, len, v) in expect {
            assert_eq!(read(&mut p, off, len), v, "{off:#x}");
        }
        for off in (0x90..0x1000).step_by(4) {
            assert_eq!(read(&mut p, off, 4), 0, "{off:#x}");
        }
        assert_eq!(
            rec.count(),
            0,
            "a guest alone cannot raise a hot-plug event"
        );
    }

    #[test]
    fn random_accesses_never_panic_or_change_read_only_bits() {
        let (mut p, rec) = port();
        let initial = p.space.regs;
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) as u32
        };
        for round in 0..20_000 {
            let r = next();
            let offset = (r as usize) % 0x1000;
            let len = [1, 2, 4, 0, 3, 8][(next() as usize) % 6];
            let data = next().to_le_bytes();
            let mut bytes = vec![0u8; len];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = data[i % 4];
            }
            p.write_config_register(offset / 4, (offset % 4) as u64, &bytes);
            let _ = p.read_config_register(offset / 4);
            if round % 97 == 0 {
                // Offsets far outside any config space.
                p.write_config_register(usize::MAX, u64::MAX, &[1, 2]);
                p.write_config_register(5000, 0, &[1; 4]);
                p.write_config_register(3, 4, &[1]);
                assert_eq!(p.read_config_register(usize::MAX), 0);
            }
            for (i, &init) in initial.iter().enumerate() {
                let fixed = !(p.space.wmask[i] | p.space.w1c[i]);
                let now = p.read_config_register(i);
                assert_eq!(now & fixed, init & fixed, "round {round}, dword {i:#x}");
                assert_eq!(now & p.space.w1c[i] & !init, 0, "RW1C bit set");
            }
            assert!(p.events.len() <= MAX_QUEUED_EVENTS);
        }
        assert!(snapshot(&mut p)[0x100..].iter().all(|&b| b == 0));
        assert_ne!(p.space.regs, initial, "the loop reached writable bits");
        assert_eq!(rec.count(), 0);
        // The slot still works after all that.
        guest_enables_hotplug(&mut p);
        write(&mut p, SLTSTA, 2, 0xffff);
        p.insert_card().unwrap();
        assert_eq!(rec.count(), 1);
    }
}
