//! The buses and the PCI config mechanisms, against models:
//! - `SharedBus` (devices/src/bus.rs): inserts, removals by owner, `remove_owner`,
//!   `owner_at`, reads and writes of any length anywhere, and snapshots taken before
//!   changes. A model (a list of ranges) says what each call must answer: which range
//!   an access lands in and at which offset, which insertions overlap, who may remove
//!   what; a snapshot must keep answering as the bus was when it was taken.
//! - The host bridge (devices/src/pci/host_bridge.rs) at 0xCF8 and its ECAM window
//!   (pci/ecam.rs), both reached through the VMM's buses with accesses of any width at
//!   any offset, with functions added in any slot. Each function is a plain register
//!   file that asserts what a bridge may hand it (register < 1024, 1/2/4 bytes inside
//!   one dword); a model of mechanism #1 and ECAM says what every read returns and
//!   which writes land.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use devices::bus::{BusDevice, BusError, Owner, SharedBus};
use devices::pci::ecam::EcamWindow;
use devices::pci::host_bridge::{PciRoot, PciRootError, PCI_CONFIG_BASE};
use devices::pci::testing::Regs;
use devices::pci::PciDevice;
use libfuzzer_sys::fuzz_target;

const ECAM_BASE: u64 = 0xf000_0000;
const ECAM_SIZE: u64 = 16 << 20;

/// The writes the probes saw, as (base, offset, bytes).
type Writes = Arc<Mutex<Vec<(u64, u64, Vec<u8>)>>>;

/// A bus device that answers with a pattern of its id and the offset, and records writes.
struct Probe {
    id: u8,
    writes: Writes,
}

fn pattern(id: u8, offset: u64, i: usize) -> u8 {
    id.wrapping_mul(31)
        .wrapping_add(offset as u8)
        .wrapping_add(i as u8)
}

impl BusDevice for Probe {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = pattern(self.id, offset, i);
        }
    }
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        self.writes
            .lock()
            .unwrap()
            .push((base, offset, data.to_vec()));
    }
}

/// A function's config registers, checking the contract of `PciDevice` callers.
struct Checked(Regs);

impl PciDevice for Checked {
    fn read_config_register(&mut self, reg_idx: usize) -> u32 {
        assert!(reg_idx < 1024, "register {reg_idx} past 4 KiB");
        self.0.read_config_register(reg_idx)
    }
    fn write_config_register(&mut self, reg_idx: usize, offset: u64, data: &[u8]) {
        assert!(reg_idx < 1024, "register {reg_idx} past 4 KiB");
        assert!(matches!(data.len(), 1 | 2 | 4), "{} bytes", data.len());
        assert!(
            offset as usize + data.len() <= 4,
            "{} bytes at +{offset}",
            data.len()
        );
        self.0.write_config_register(reg_idx, offset, data);
    }
}

/// An address from a small space (so ranges collide) or anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    Small(u16),
    Top(u16),
    Raw(u64),
}

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::Small(a) => u64::from(a),
            Addr::Top(a) => u64::MAX - u64::from(a),
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        owner: u8,
        base: Addr,
        len: u16,
        huge: bool,
    },
    Remove {
        owner: u8,
        base: Addr,
    },
    RemoveOwner {
        owner: u8,
    },
    OwnerAt {
        addr: Addr,
    },
    Read {
        addr: Addr,
        len: u8,
    },
    Write {
        addr: Addr,
        len: u8,
        byte: u8,
    },
    Snapshot,
    SnapshotRead {
        addr: Addr,
        len: u8,
    },
    /// Puts a register file at slot/function (`any`: the lowest free slot).
    AddFunction {
        slot: u8,
        function: u8,
        any: bool,
        whole_slot: bool,
    },
    /// An access to port 0xCF8 + `offset` (the address register, the data window, and
    /// past them).
    Port {
        offset: u8,
        len: u8,
        value: u32,
        write: bool,
    },
    /// Selects bus/slot/function/register in the address register (enable bit given).
    Select {
        enable: bool,
        bus: u8,
        slot: u8,
        function: u8,
        reg: u8,
        low: u8,
    },
    /// An access at ECAM + `offset`.
    Ecam {
        offset: u32,
        len: u8,
        value: u32,
        write: bool,
    },
}

#[derive(Clone)]
struct Range {
    base: u64,
    len: u64,
    owner: u8,
    id: u8,
}

fn owner(o: u8) -> Owner {
    // 0 is the VMM; the others are fixed unique owners made once per input.
    thread_local! {
        static OWNERS: [Owner; 3] = [Owner::unique(), Owner::unique(), Owner::unique()];
    }
    match o % 4 {
        0 => Owner::VMM,
        n => OWNERS.with(|v| v[usize::from(n) - 1]),
    }
}

/// The range holding every byte of `[addr, addr + len)`.
fn holder(model: &[Range], addr: u64, len: u64) -> Option<&Range> {
    model
        .iter()
        .find(|r| addr >= r.base && addr.checked_add(len).is_some_and(|e| e <= r.base + r.len))
}

struct Pci {
    /// (bus 0) slot, function -> registers, as the model holds them.
    regs: Vec<Option<Vec<u32>>>,
    address: u32,
}

impl Pci {
    fn function(&mut self, bus: u32, slot: u32, function: u32) -> Option<&mut Vec<u32>> {
        if bus != 0 || slot >= 32 || function >= 8 {
            return None;
        }
        self.regs[(slot * 8 + function) as usize].as_mut()
    }
    fn read(&mut self, bus: u32, slot: u32, function: u32, reg: usize) -> u32 {
        if (bus, slot, function) == (0, 0, 0) {
            return match reg {
                0 => 0x0008_1b36,
                2 => 0x0600_0000,
                _ => 0,
            };
        }
        self.function(bus, slot, function)
            .map_or(u32::MAX, |r| r[reg])
    }
    fn write(&mut self, bus: u32, slot: u32, function: u32, reg: usize, byte: usize, data: &[u8]) {
        if let Some(r) = self.function(bus, slot, function) {
            let mut b = r[reg].to_le_bytes();
            b[byte..byte + data.len()].copy_from_slice(data);
            r[reg] = u32::from_le_bytes(b);
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let bus = SharedBus::new();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut model: Vec<Range> = Vec::new();
    let mut snap: Option<(Arc<devices::bus::Bus>, Vec<Range>)> = None;
    let mut next_id = 0u8;

    let root = Arc::new(Mutex::new(PciRoot::new()));
    let pio = SharedBus::new();
    let mmio = SharedBus::new();
    pio.insert(Owner::VMM, root.clone(), PCI_CONFIG_BASE, 8)
        .unwrap();
    let ecam: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(EcamWindow::new(root.clone())));
    mmio.insert(Owner::VMM, ecam, ECAM_BASE, ECAM_SIZE).unwrap();
    let mut pci = Pci {
        regs: vec![None; 256],
        address: 0,
    };
    let mut host_bridge_slot_used = [false; 32];
    host_bridge_slot_used[0] = true;

    for op in ops.into_iter().take(512) {
        match op {
            Op::Insert {
                owner: o,
                base,
                len,
                huge,
            } => {
                let base = base.get();
                let len = if huge {
                    u64::MAX - u64::from(len)
                } else {
                    u64::from(len)
                };
                let id = next_id;
                let dev = Arc::new(Mutex::new(Probe {
                    id,
                    writes: writes.clone(),
                }));
                let got = bus.insert(owner(o), dev, base, len);
                let end = base.checked_add(len);
                let want = match end {
                    None => Err(BusError::InvalidRange { base, len }),
                    Some(_) if len == 0 => Err(BusError::InvalidRange { base, len }),
                    Some(e) if model.iter().any(|r| base < r.base + r.len && r.base < e) => {
                        Err(BusError::Overlap { base, len })
                    }
                    Some(_) => Ok(()),
                };
                assert_eq!(got, want, "insert {base:#x}+{len:#x}");
                if got.is_ok() {
                    model.push(Range {
                        base,
                        len,
                        owner: o % 4,
                        id,
                    });
                    next_id = next_id.wrapping_add(1);
                }
            }
            Op::Remove { owner: o, base } => {
                let base = base.get();
                let got = bus.remove(owner(o), base).map(|_| ());
                let want = match model.iter().position(|r| r.base == base) {
                    None => Err(BusError::NotFound(base)),
                    Some(i) if model[i].owner != o % 4 => Err(BusError::NotOwner(base)),
                    Some(i) => {
                        model.remove(i);
                        Ok(())
                    }
                };
                assert_eq!(got, want, "remove {base:#x} by {o}");
            }
            Op::RemoveOwner { owner: o } => {
                let n = bus.remove_owner(owner(o));
                let before = model.len();
                model.retain(|r| r.owner != o % 4);
                assert_eq!(n, before - model.len(), "remove_owner {o}");
            }
            Op::OwnerAt { addr } => {
                let addr = addr.get();
                let want = holder(&model, addr, 1).map(|r| owner(r.owner));
                assert_eq!(bus.owner_at(addr), want, "owner_at {addr:#x}");
            }
            Op::Read { addr, len } => {
                let addr = addr.get();
                let len = usize::from(len % 17).max(1);
                let mut data = vec![0u8; len];
                let claimed = bus.read(addr, &mut data);
                match holder(&model, addr, len as u64) {
                    Some(r) => {
                        assert!(claimed, "read {addr:#x}+{len} inside {:#x}", r.base);
                        for (i, b) in data.iter().enumerate() {
                            assert_eq!(*b, pattern(r.id, addr - r.base, i), "read {addr:#x}");
                        }
                    }
                    None => {
                        assert!(!claimed, "read {addr:#x}+{len} claimed outside every range");
                        assert!(data.iter().all(|&b| b == 0xff));
                    }
                }
            }
            Op::Write { addr, len, byte } => {
                let addr = addr.get();
                let len = usize::from(len % 17).max(1);
                let data = vec![byte; len];
                writes.lock().unwrap().clear();
                let claimed = bus.write(addr, &data);
                let seen = std::mem::take(&mut *writes.lock().unwrap());
                match holder(&model, addr, len as u64) {
                    Some(r) => {
                        assert!(claimed);
                        assert_eq!(seen, vec![(r.base, addr - r.base, data)], "write {addr:#x}");
                    }
                    None => assert!(!claimed && seen.is_empty(), "write {addr:#x}+{len}"),
                }
            }
            Op::Snapshot => snap = Some((bus.snapshot(), model.clone())),
            Op::SnapshotRead { addr, len } => {
                if let Some((s, m)) = &snap {
                    let addr = addr.get();
                    let len = usize::from(len % 9).max(1);
                    let mut data = vec![0u8; len];
                    let claimed = s.read(addr, &mut data);
                    assert_eq!(
                        claimed,
                        holder(m, addr, len as u64).is_some(),
                        "snapshot {addr:#x}"
                    );
                }
            }
            Op::AddFunction {
                slot,
                function,
                any,
                whole_slot,
            } => {
                let dev = Arc::new(Mutex::new(Checked(Regs::zeroed(1024))));
                let mut r = root.lock().unwrap();
                let placed = if any {
                    let free = host_bridge_slot_used.iter().position(|u| !u);
                    let got = r.add_device_any_slot(dev);
                    match free {
                        Some(s) => assert_eq!(got, Ok(s as u8)),
                        None => assert_eq!(got, Err(PciRootError::BusFull)),
                    }
                    got.ok().map(|s| (s, 0))
                } else if whole_slot {
                    let got = r.add_device(slot, dev);
                    let want = if slot >= 32 {
                        Err(PciRootError::NoSuchSlot(slot))
                    } else if host_bridge_slot_used[usize::from(slot)] {
                        Err(PciRootError::SlotInUse(slot))
                    } else {
                        Ok(())
                    };
                    assert_eq!(got, want, "add_device {slot}");
                    got.ok().map(|_| (slot, 0))
                } else {
                    let got = r.add_function(slot, function, dev);
                    let used = slot < 32
                        && function < 8
                        && (pci.regs[usize::from(slot) * 8 + usize::from(function)].is_some()
                            || (slot, function) == (0, 0));
                    let want = if slot >= 32 {
                        Err(PciRootError::NoSuchSlot(slot))
                    } else if function >= 8 {
                        Err(PciRootError::NoSuchFunction(function))
                    } else if used {
                        Err(PciRootError::FunctionInUse { slot, function })
                    } else {
                        Ok(())
                    };
                    assert_eq!(got, want, "add_function {slot}.{function}");
                    got.ok().map(|_| (slot, function))
                };
                if let Some((s, f)) = placed {
                    pci.regs[usize::from(s) * 8 + usize::from(f)] = Some(vec![0; 1024]);
                    host_bridge_slot_used[usize::from(s)] = true;
                }
                assert_eq!(
                    r.free_slot().ok(),
                    host_bridge_slot_used
                        .iter()
                        .position(|u| !u)
                        .map(|s| s as u8)
                );
            }
            Op::Select {
                enable,
                bus: b,
                slot,
                function,
                reg,
                low,
            } => {
                let v = u32::from(enable) << 31
                    | u32::from(b) << 16
                    | u32::from(slot & 0x1f) << 11
                    | u32::from(function & 7) << 8
                    | u32::from(reg & 0x3f) << 2
                    | u32::from(low & 3);
                pio.write(PCI_CONFIG_BASE, &v.to_le_bytes());
                pci.address = v & 0x80ff_fffc;
            }
            Op::Port {
                offset,
                len,
                value,
                write,
            } => {
                let offset = u64::from(offset % 12);
                let len = usize::from(len % 9).max(1);
                let addr = PCI_CONFIG_BASE + offset;
                let in_range = offset + len as u64 <= 8;
                let a = pci.address;
                let selected = (a & 0x8000_0000 != 0).then_some((
                    (a >> 16) & 0xff,
                    (a >> 11) & 0x1f,
                    (a >> 8) & 7,
                    ((a >> 2) & 0x3f) as usize,
                ));
                let data_window = (4..8).contains(&offset)
                    && matches!(len, 1 | 2 | 4)
                    && offset - 4 + len as u64 <= 4;
                if write {
                    let bytes = &[value.to_le_bytes(), value.to_le_bytes()].concat()[..len];
                    let claimed = pio.write(addr, bytes);
                    assert_eq!(claimed, in_range);
                    if offset == 0 && len == 4 {
                        pci.address = value & 0x80ff_fffc;
                    } else if data_window {
                        if let Some((b, s, f, reg)) = selected {
                            pci.write(b, s, f, reg, (offset - 4) as usize, bytes);
                        }
                    }
                } else {
                    let mut data = vec![0u8; len];
                    let claimed = pio.read(addr, &mut data);
                    assert_eq!(claimed, in_range);
                    let want: Vec<u8> = if !in_range {
                        vec![0xff; len]
                    } else if offset == 0 && len == 4 {
                        pci.address.to_le_bytes().to_vec()
                    } else if data_window {
                        let v = match selected {
                            Some((b, s, f, reg)) => pci.read(b, s, f, reg),
                            None => u32::MAX,
                        };
                        v.to_le_bytes()[(offset - 4) as usize..(offset - 4) as usize + len].to_vec()
                    } else {
                        vec![0xff; len]
                    };
                    assert_eq!(data, want, "port {offset}+{len} with address {a:#x}");
                }
            }
            Op::Ecam {
                offset,
                len,
                value,
                write,
            } => {
                let offset = u64::from(offset) % (ECAM_SIZE + 8);
                let len = usize::from(len % 9).max(1);
                let in_range = offset + len as u64 <= ECAM_SIZE;
                let byte = (offset & 3) as usize;
                let valid = in_range && matches!(len, 1 | 2 | 4) && byte + len <= 4;
                let (b, s, f, reg) = (
                    (offset >> 20) as u32,
                    ((offset >> 15) & 0x1f) as u32,
                    ((offset >> 12) & 7) as u32,
                    ((offset & 0xfff) >> 2) as usize,
                );
                if write {
                    let bytes = &[value.to_le_bytes(), value.to_le_bytes()].concat()[..len];
                    assert_eq!(mmio.write(ECAM_BASE + offset, bytes), in_range);
                    if valid {
                        pci.write(b, s, f, reg, byte, bytes);
                    }
                } else {
                    let mut data = vec![0u8; len];
                    assert_eq!(mmio.read(ECAM_BASE + offset, &mut data), in_range);
                    let want = if valid {
                        pci.read(b, s, f, reg).to_le_bytes()[byte..byte + len].to_vec()
                    } else {
                        vec![0xff; len]
                    };
                    assert_eq!(data, want, "ECAM {offset:#x}+{len}");
                }
            }
        }
    }
});
