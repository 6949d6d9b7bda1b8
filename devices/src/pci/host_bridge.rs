//! PCI bus 0 behind configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at
//! 0xCFC-0xCFF. A host bridge function sits at 00.0 so guests recognise the bus (Linux's
//! direct-probe sanity check looks for a host bridge class on bus 0); every other slot is
//! empty until a device is added with [`PciRoot::add_device`].
//!
//! Bus 0 has up to 8 functions per slot; absent functions read all-ones, which is how a
//! guest learns there is nothing there. PCIe root ports on bus 0
//! ([`super::root_port::RootPort`], added with [`PciRoot::add_root_port`]) each have a
//! secondary bus whose device 0 holds the card in their slot; the secondary bus number
//! is the one the port's header says now (the guest may renumber), so routing follows
//! it. Mechanism #1 reaches the first 256 bytes of each function's config space; the
//! ECAM window ([`super::ecam`]) reaches all 4 KiB.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::root_port::{RootPort, SlotEvent, MAX_QUEUED_EVENTS};
use super::PciDevice;
use crate::bus::BusDevice;

/// CONFIG_ADDRESS port.
pub const PCI_CONFIG_BASE: u64 = 0xcf8;
/// CONFIG_ADDRESS (4 bytes) + CONFIG_DATA (4 bytes).
pub const PCI_CONFIG_PORTS: u64 = 8;
/// Slots on a conventional bus.
pub const PCI_SLOTS: u8 = 32;

/// Vendor ID of the host bridge: Red Hat, Inc. (the virtual-device vendor that QEMU also uses).
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
/// Device ID of the host bridge: Red Hat's generic PCIe host bridge; guests bind no driver to it.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;

const ENABLE: u32 = 1 << 31;
/// Bits of CONFIG_ADDRESS that are writable: enable, bus, device, function, register.
const ADDRESS_MASK: u32 = ENABLE | 0x00ff_fffc;

/// A shared handle to a PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Errors from placing devices on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciRootError {
    /// The slot number is out of range.
    #[error("PCI slot {0} does not exist (bus 0 has slots 0-31)")]
    NoSuchSlot(u8),
    /// The slot is taken (slot 0 is always the host bridge).
    #[error("PCI slot {0} is already in use")]
    SlotInUse(u8),
    /// Every slot is taken.
    #[error("no free slot on PCI bus 0 (31 devices at most)")]
    BusFull,
    /// The function number is out of range.
    #[error("PCI function {0} does not exist (a slot has functions 0-7)")]
    NoSuchFunction(u8),
    /// The function is taken.
    #[error("PCI function {slot:02x}.{function} is already in use")]
    FunctionInUse {
        /// The slot.
        slot: u8,
        /// The function.
        function: u8,
    },
    /// No root port has this index.
    #[error("no PCIe root port {0}")]
    NoSuchPort(usize),
    /// The port's slot already holds a card.
    #[error("the slot of PCIe root port {0} already holds a device")]
    PortInUse(usize),
}

/// A root port on bus 0 and the functions of the card in its slot (device 0 of its
/// secondary bus: a PCIe link has one device).
struct Downstream {
    port: Arc<Mutex<RootPort>>,
    card: [Option<SharedPciDevice>; PCI_FUNCTIONS as usize],
}

/// Functions in a slot.
pub const PCI_FUNCTIONS: u8 = 8;

/// The host bridge function at 00.0: a read-only type 0 header with class 06/00.
#[derive(Debug, Default)]
pub struct HostBridge;

impl PciDevice for HostBridge {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        match reg_idx {
            0 => u32::from(HOST_BRIDGE_DEVICE) << 16 | u32::from(HOST_BRIDGE_VENDOR),
            2 => 0x0600_0000, // class 06 (bridge), subclass 00 (host), prog-if 0, revision 0
            _ => 0,           // header type 0, single function, no BARs, no capabilities
        }
    }

    fn write_config_register(&mut self, _reg_idx: usize, _offset: u64, _data: &[u8]) {}
}

/// Bus 0 and its configuration mechanism, as one port-I/O device on 0xCF8..0xD00.
pub struct PciRoot {
    config_address: u32,
    /// `slots[slot][function]`.
    slots: Vec<[Option<SharedPciDevice>; PCI_FUNCTIONS as usize]>,
    /// The root ports, in the order they were added (their index).
    ports: Vec<Downstream>,
    /// Where the ports' slot events go once a config write produced them.
    events: Option<PortEvents>,
}

/// The root ports' slot events as they happen in guest config writes (on vCPU
/// threads), for the VMM's event loop: a queue of `(port index, event)` and an eventfd
/// that says it is not empty.
#[derive(Clone)]
pub struct PortEvents {
    queue: Arc<Mutex<VecDeque<(usize, SlotEvent)>>>,
    ready: Arc<EventFd>,
}

impl PortEvents {
    /// An empty queue with its (non-blocking) eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue: Arc::default(),
            ready: Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?),
        })
    }

    /// The eventfd the event loop watches.
    pub fn ready(&self) -> &EventFd {
        &self.ready
    }

    /// Everything queued so far (and the eventfd read, so its watch calms down).
    pub fn drain(&self) -> Vec<(usize, SlotEvent)> {
        let _ = self.ready.read();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    fn push(&self, port: usize, events: Vec<SlotEvent>) {
        if events.is_empty() {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            // Bounded like the port's own queue: a guest looping on Slot Control costs
            // at most this much until the event loop drains it.
            if q.len() >= MAX_QUEUED_EVENTS {
                q.pop_front();
            }
            q.push_back((port, e));
        }
        if let Err(e) = self.ready.write(1) {
            crate::warn_limited!("PCIe root port events: {e}");
        }
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with the host bridge at 00.0 and nothing else.
    pub fn new() -> Self {
        let mut slots: Vec<[Option<SharedPciDevice>; PCI_FUNCTIONS as usize]> =
            (0..PCI_SLOTS).map(|_| Default::default()).collect();
        slots[0][0] = Some(Arc::new(Mutex::new(HostBridge)));
        Self {
            config_address: 0,
            slots,
            ports: Vec::new(),
            events: None,
        }
    }

    /// Sends the root ports' slot events to `events` from now on.
    pub fn set_port_events(&mut self, events: PortEvents) {
        self.events = Some(events);
    }

    /// Puts a root port at function 0 of an empty `slot`; returns its index, by which
    /// [`PciRoot::insert_card`] and [`PciRoot::remove_card`] name it.
    pub fn add_root_port(
        &mut self,
        slot: u8,
        port: Arc<Mutex<RootPort>>,
    ) -> Result<usize, PciRootError> {
        self.add_device(slot, port.clone())?;
        self.ports.push(Downstream {
            port,
            card: Default::default(),
        });
        Ok(self.ports.len() - 1)
    }

    /// The root ports, by index.
    pub fn root_ports(&self) -> Vec<Arc<Mutex<RootPort>>> {
        self.ports.iter().map(|d| d.port.clone()).collect()
    }

    /// Puts the functions of a card in the slot of port `index` (function `i` of the
    /// card is `functions[i]`; `None` leaves a function absent). The port's slot state
    /// (presence, the hot-plug interrupt) is the caller's, through the port.
    pub fn insert_card(
        &mut self,
        index: usize,
        functions: Vec<Option<SharedPciDevice>>,
    ) -> Result<(), PciRootError> {
        let d = self
            .ports
            .get_mut(index)
            .ok_or(PciRootError::NoSuchPort(index))?;
        if d.card.iter().any(Option::is_some) {
            return Err(PciRootError::PortInUse(index));
        }
        if functions.len() > usize::from(PCI_FUNCTIONS) {
            return Err(PciRootError::NoSuchFunction(PCI_FUNCTIONS));
        }
        for (slot, f) in d.card.iter_mut().zip(functions) {
            *slot = f;
        }
        Ok(())
    }

    /// Takes the card out of the slot of port `index`: its functions no longer answer
    /// config cycles. Returns them (the caller tears them down).
    pub fn remove_card(&mut self, index: usize) -> Result<Vec<SharedPciDevice>, PciRootError> {
        let d = self
            .ports
            .get_mut(index)
            .ok_or(PciRootError::NoSuchPort(index))?;
        Ok(d.card.iter_mut().filter_map(Option::take).collect())
    }

    /// Whether the slot of port `index` holds a card.
    pub fn port_has_card(&self, index: usize) -> bool {
        self.ports
            .get(index)
            .is_some_and(|d| d.card.iter().any(Option::is_some))
    }

    /// Puts `device` at function 0 of an empty `slot`.
    pub fn add_device(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciRootError> {
        let functions = self
            .slots
            .get(usize::from(slot))
            .ok_or(PciRootError::NoSuchSlot(slot))?;
        if functions.iter().any(Option::is_some) {
            return Err(PciRootError::SlotInUse(slot));
        }
        self.add_function(slot, 0, device)
    }

    /// Puts `device` at `slot.function` (the functions of one multifunction device).
    /// A guest scans function 0 first, so function 0 of the slot should come first.
    pub fn add_function(
        &mut self,
        slot: u8,
        function: u8,
        device: SharedPciDevice,
    ) -> Result<(), PciRootError> {
        let functions = self
            .slots
            .get_mut(usize::from(slot))
            .ok_or(PciRootError::NoSuchSlot(slot))?;
        let entry = functions
            .get_mut(usize::from(function))
            .ok_or(PciRootError::NoSuchFunction(function))?;
        if entry.is_some() {
            return Err(PciRootError::FunctionInUse { slot, function });
        }
        *entry = Some(device);
        Ok(())
    }

    /// The lowest slot with no function.
    pub fn free_slot(&self) -> Result<u8, PciRootError> {
        let i = self
            .slots
            .iter()
            .position(|f| f.iter().all(Option::is_none))
            .ok_or(PciRootError::BusFull)?;
        u8::try_from(i).map_err(|_| PciRootError::BusFull)
    }

    /// Whether `slot` has no function yet.
    pub fn slot_is_free(&self, slot: u8) -> bool {
        self.slots
            .get(usize::from(slot))
            .is_some_and(|f| f.iter().all(Option::is_none))
    }

    /// Adds `device` at the lowest free slot and returns the slot.
    pub fn add_device_any_slot(&mut self, device: SharedPciDevice) -> Result<u8, PciRootError> {
        let slot = self.free_slot()?;
        self.add_device(slot, device)?;
        Ok(slot)
    }

    /// The function at `bus:slot.function`, if one exists: on bus 0, or device 0 of the
    /// secondary bus of a root port (by the bus number its header holds now; bus 0 is
    /// never a secondary bus).
    fn function(&self, bus: u32, slot: u32, function: u32) -> Option<&SharedPciDevice> {
        if bus == 0 {
            return self
                .slots
                .get(slot as usize)?
                .get(function as usize)?
                .as_ref();
        }
        if slot != 0 {
            return None;
        }
        self.ports
            .iter()
            .find(|d| {
                let secondary = d
                    .port
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .bus_numbers()
                    .secondary;
                secondary != 0 && u32::from(secondary) == bus
            })?
            .card
            .get(function as usize)?
            .as_ref()
    }

    /// Config register `reg` (a dword index: 0-63 for the header space, up to 1023 with
    /// the extended space) of `bus:slot.function`; all-ones where no function exists.
    pub fn config_read(&self, bus: u32, slot: u32, function: u32, reg: usize) -> u32 {
        match self.function(bus, slot, function) {
            Some(dev) => dev
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_config_register(reg),
            None => u32::MAX,
        }
    }

    /// Writes `data` at byte `offset` of config register `reg` of `bus:slot.function`;
    /// dropped where no function exists.
    pub fn config_write(
        &self,
        bus: u32,
        slot: u32,
        function: u32,
        reg: usize,
        offset: usize,
        data: &[u8],
    ) {
        if let Some(dev) = self.function(bus, slot, function) {
            dev.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_config_register(reg, offset as u64, data);
        }
        // A write to a root port may have moved its slot (power, indicators, reset).
        if bus == 0 {
            if let Some(dev) = self.function(bus, slot, function) {
                let target = Arc::as_ptr(dev) as *const ();
                if let Some(i) = self
                    .ports
                    .iter()
                    .position(|d| Arc::as_ptr(&d.port) as *const () == target)
                {
                    let events = self.ports[i]
                        .port
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take_events();
                    if let Some(q) = &self.events {
                        q.push(i, events);
                    }
                }
            }
        }
    }

    /// What CONFIG_ADDRESS selects: (bus, slot, function, register), when enabled.
    fn selected(&self) -> Option<(u32, u32, u32, usize)> {
        let a = self.config_address;
        if a & ENABLE == 0 {
            return None;
        }
        let (bus, slot, function) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 0x7);
        Some((bus, slot, function, ((a >> 2) & 0x3f) as usize))
    }

    fn read_data(&self, byte: usize, data: &mut [u8]) {
        let value = match self.selected() {
            Some((bus, slot, function, reg)) => self.config_read(bus, slot, function, reg),
            None => u32::MAX,
        };
        let bytes = value.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(byte + i).copied().unwrap_or(0xff);
        }
    }

    fn write_data(&self, byte: usize, data: &[u8]) {
        if let Some((bus, slot, function, reg)) = self.selected() {
            self.config_write(bus, slot, function, reg, byte, data);
        }
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // CONFIG_ADDRESS is a dword register; byte and word accesses to 0xCF8-0xCFB are
            // other chipset ports (e.g. 0xCF9 reset control) that this bus does not decode.
            (0, 4) => data.copy_from_slice(&self.config_address.to_le_bytes()),
            (4..=7, 1 | 2 | 4) if offset as usize - 4 + data.len() <= 4 => {
                self.read_data(offset as usize - 4, data)
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[a, b, c, d]) => {
                self.config_address = u32::from_le_bytes([a, b, c, d]) & ADDRESS_MASK
            }
            (4..=7, _)
                if matches!(data.len(), 1 | 2 | 4) && offset as usize - 4 + data.len() <= 4 =>
            {
                self.write_data(offset as usize - 4, data)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pci::testing::Regs;

    fn select(root: &mut PciRoot, bus: u32, slot: u32, func: u32, reg: u32) {
        let addr = ENABLE | bus << 16 | slot << 11 | func << 8 | reg << 2;
        root.write(PCI_CONFIG_BASE, 0, &addr.to_le_bytes());
    }

    fn read(root: &mut PciRoot, offset: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        root.read(PCI_CONFIG_BASE, offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    struct NoSignal;
    impl crate::pci::root_port::HotplugSignal for NoSignal {
        fn signal(&self, _msg: crate::pci::MsiMessage) {}
    }

    #[test]
    fn a_card_behind_a_root_port_answers_on_the_port_s_secondary_bus() {
        let mut root = PciRoot::new();
        let port = Arc::new(Mutex::new(RootPort::new(1, 1, Box::new(NoSignal)).unwrap()));
        port.lock().unwrap().set_bus_numbers(0, 1, 1).unwrap();
        assert_eq!(root.add_root_port(4, port.clone()), Ok(0));
        assert_eq!(
            root.config_read(0, 4, 0, 0),
            0x000c_1b36,
            "the port on bus 0"
        );
        assert_eq!(root.config_read(1, 0, 0, 0), u32::MAX, "an empty slot");
        let mut regs = vec![0u32; 64];
        regs[0] = 0x1234_abcd;
        root.insert_card(0, vec![Some(Arc::new(Mutex::new(Regs(regs))))])
            .unwrap();
        assert!(root.port_has_card(0));
        assert_eq!(root.config_read(1, 0, 0, 0), 0x1234_abcd);
        assert_eq!(
            root.config_read(1, 1, 0, 0),
            u32::MAX,
            "one device per link"
        );
        assert_eq!(root.config_read(1, 0, 1, 0), u32::MAX, "absent function");
        assert_eq!(root.config_read(2, 0, 0, 0), u32::MAX, "no such bus");
        assert_eq!(
            root.insert_card(0, vec![None]),
            Err(PciRootError::PortInUse(0))
        );
        // The guest renumbers the port: the card follows.
        port.lock().unwrap().set_bus_numbers(0, 5, 5).unwrap();
        assert_eq!(root.config_read(1, 0, 0, 0), u32::MAX);
        assert_eq!(root.config_read(5, 0, 0, 0), 0x1234_abcd);
        // A port whose secondary bus reads 0 routes nothing (bus 0 is the root's).
        let _ = port.lock().unwrap().set_bus_numbers(0, 0, 0);
        assert_eq!(root.config_read(0, 0, 0, 0), 0x0008_1b36, "the host bridge");
        port.lock().unwrap().set_bus_numbers(0, 5, 5).unwrap();
        assert_eq!(root.remove_card(0).unwrap().len(), 1);
        assert_eq!(root.config_read(5, 0, 0, 0), u32::MAX, "gone");
        assert!(!root.port_has_card(0));
        assert!(matches!(
            root.remove_card(3),
            Err(PciRootError::NoSuchPort(3))
        ));
    }

    #[test]
    fn a_guest_write_that_powers_a_slot_off_reaches_the_event_queue() {
        let mut root = PciRoot::new();
        let port = Arc::new(Mutex::new(RootPort::new(1, 1, Box::new(NoSignal)).unwrap()));
        root.add_root_port(2, port.clone()).unwrap();
        let events = PortEvents::new().unwrap();
        root.set_port_events(events.clone());
        // Slot Control is at the PCIe capability (0x40) + 0x18: power controller
        // control (bit 10) on = slot off; the slot starts off, so turn it on first.
        let sltctl = 0x58usize;
        let write16 = |root: &PciRoot, v: u16| {
            root.config_write(0, 2, 0, sltctl / 4, sltctl % 4, &v.to_le_bytes())
        };
        write16(&root, 0);
        assert!(events
            .drain()
            .iter()
            .any(|(i, e)| *i == 0 && *e == SlotEvent::PowerOn));
        write16(&root, 1 << 10);
        assert!(events
            .drain()
            .iter()
            .any(|(i, e)| *i == 0 && *e == SlotEvent::PowerOff));
        assert!(events.drain().is_empty(), "drained");
    }

    #[test]
    fn host_bridge_is_found_at_00_0() {
        let mut root = PciRoot::new();
        select(&mut root, 0, 0, 0, 0);
        assert_eq!(read(&mut root, 4, 4), 0x0008_1b36);
        assert_eq!(read(&mut root, 4, 2), 0x1b36, "vendor as a word");
        assert_eq!(read(&mut root, 6, 2), 0x0008, "device as a word at 0xCFE");
        select(&mut root, 0, 0, 0, 2);
        assert_eq!(read(&mut root, 7, 1), 0x06, "base class byte at 0xCFF");
        assert_eq!(read(&mut root, 6, 1), 0x00, "subclass host");
        select(&mut root, 0, 0, 0, 3);
        assert_eq!(read(&mut root, 6, 1) & 0x80, 0, "single function");
    }

    #[test]
    fn address_register_reads_back_masked() {
        let mut root = PciRoot::new();
        root.write(PCI_CONFIG_BASE, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read(&mut root, 0, 4), 0x80ff_fffc);
        // Linux's conf1 probe: write 0x80000000, expect to read it back.
        root.write(PCI_CONFIG_BASE, 0, &0x8000_0000u32.to_le_bytes());
        assert_eq!(read(&mut root, 0, 4), 0x8000_0000);
        // Byte access to 0xCF8/0xCF9 is not CONFIG_ADDRESS.
        root.write(PCI_CONFIG_BASE, 1, &[0x06]);
        assert_eq!(read(&mut root, 0, 4), 0x8000_0000);
        assert_eq!(read(&mut root, 1, 1), 0xff);
    }

    #[test]
    fn absent_functions_and_disabled_cycles_read_all_ones() {
        let mut root = PciRoot::new();
        select(&mut root, 0, 5, 0, 0);
        assert_eq!(read(&mut root, 4, 4), 0xffff_ffff, "empty slot");
        select(&mut root, 0, 0, 1, 0);
        assert_eq!(
            read(&mut root, 4, 4),
            0xffff_ffff,
            "function 1 of the bridge"
        );
        select(&mut root, 1, 0, 0, 0);
        assert_eq!(read(&mut root, 4, 4), 0xffff_ffff, "bus 1");
        root.write(PCI_CONFIG_BASE, 0, &0u32.to_le_bytes()); // enable bit clear
        assert_eq!(read(&mut root, 4, 4), 0xffff_ffff);
        assert_eq!(read(&mut root, 6, 2), 0xffff);
    }

    #[test]
    fn added_device_sees_byte_word_dword_writes_at_the_right_place() {
        let mut root = PciRoot::new();
        let dev = Arc::new(Mutex::new(Regs::zeroed(64)));
        root.add_device(3, dev.clone()).unwrap();
        select(&mut root, 0, 3, 0, 4);
        root.write(PCI_CONFIG_BASE, 4, &0x1122_3344u32.to_le_bytes());
        root.write(PCI_CONFIG_BASE, 7, &[0xaa]);
        root.write(PCI_CONFIG_BASE, 4, &[0x55, 0x66]);
        assert_eq!(dev.lock().unwrap().0[4], 0xaa22_6655);
        assert_eq!(read(&mut root, 5, 2), 0x2266);
        // An access crossing the dword is not a config cycle.
        root.write(PCI_CONFIG_BASE, 6, &0u32.to_le_bytes());
        assert_eq!(dev.lock().unwrap().0[4], 0xaa22_6655);
        // Disabled: the write goes nowhere.
        root.write(PCI_CONFIG_BASE, 0, &((3u32 << 11) | (4 << 2)).to_le_bytes());
        root.write(PCI_CONFIG_BASE, 4, &0u32.to_le_bytes());
        assert_eq!(dev.lock().unwrap().0[4], 0xaa22_6655);
    }

    #[test]
    fn slots_are_checked() {
        let mut root = PciRoot::new();
        let d = || -> SharedPciDevice { Arc::new(Mutex::new(Regs::zeroed(64))) };
        assert_eq!(root.add_device(0, d()), Err(PciRootError::SlotInUse(0)));
        assert_eq!(root.add_device(32, d()), Err(PciRootError::NoSuchSlot(32)));
        assert_eq!(root.add_device_any_slot(d()), Ok(1));
        root.add_device(2, d()).unwrap();
        assert_eq!(root.add_device_any_slot(d()), Ok(3));
        for _ in 4..32 {
            root.add_device_any_slot(d()).unwrap();
        }
        assert_eq!(root.add_device_any_slot(d()), Err(PciRootError::BusFull));
    }

    #[test]
    fn functions_of_a_slot_answer_at_their_own_numbers() {
        let mut root = PciRoot::new();
        let mut regs = [0u32; 64];
        regs[0] = 0x1111_1af4;
        root.add_function(5, 0, Arc::new(Mutex::new(Regs(regs.to_vec()))))
            .unwrap();
        regs[0] = 0x2222_1af4;
        root.add_function(5, 3, Arc::new(Mutex::new(Regs(regs.to_vec()))))
            .unwrap();
        assert_eq!(root.config_read(0, 5, 0, 0), 0x1111_1af4);
        assert_eq!(root.config_read(0, 5, 3, 0), 0x2222_1af4);
        assert_eq!(root.config_read(0, 5, 1, 0), u32::MAX, "absent function");
        let mut b = [0u8; 4];
        select(&mut root, 0, 5, 3, 0);
        root.read(PCI_CONFIG_BASE, 4, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            0x2222_1af4,
            "mechanism #1 reaches it too"
        );
        let d = || -> SharedPciDevice { Arc::new(Mutex::new(Regs::zeroed(64))) };
        assert_eq!(
            root.add_function(5, 3, d()),
            Err(PciRootError::FunctionInUse {
                slot: 5,
                function: 3
            })
        );
        assert_eq!(
            root.add_function(5, 8, d()),
            Err(PciRootError::NoSuchFunction(8))
        );
        assert_eq!(root.add_device(5, d()), Err(PciRootError::SlotInUse(5)));
        assert!(!root.slot_is_free(5) && root.slot_is_free(6));
        assert_eq!(root.free_slot(), Ok(1));
    }
}
