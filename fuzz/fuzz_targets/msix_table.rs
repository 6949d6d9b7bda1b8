//! MSI-X: a device whose table and PBA sit anywhere (any BAR, any offset, 1-2048
//! entries, 0-64 vectors from VFIO, with or without NORESIZE), enabled, masked and
//! disabled through its control word (dword, word or byte writes), and arbitrary MMIO
//! reads and writes of any size and offset into the table, the PBA and the rest of
//! their BAR, with MSI (any layout: 32/64-bit, per-vector masks, 1-32 vectors; any
//! Multiple Message Enable and mask) and memory decode toggled in between. Checks:
//! - MSI-X is shown to the guest exactly when its table and PBA fit implemented memory
//!   BARs and VFIO offers vectors, MSI exactly when VFIO offers vectors;
//! - a table read returns what the guest wrote (byte-exact, vector control's mask bit
//!   only) and the PBA reads zero (the fake device never signals);
//! - with MSI off, the KVM routes are exactly the messages of the vectors that may
//!   deliver (MSI-X on, function mask clear, own mask clear, VFIO has the vector);
//! - `Harness::check` after each step and a clean teardown.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use passvm_fuzz::{
    bar_access, AccessLen, Harness, MsixShape, BAR0_SIZE, BAR3_SIZE, BAR4_SIZE, MSIX_CAP, MSI_CAP,
};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CtrlWrite {
    /// The whole first dword (ID and next pointer are read-only).
    Dword,
    /// The control word at cap+2.
    Word,
    /// Its high byte (enable and function mask) at cap+3.
    HighByte,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Control {
        enable: bool,
        mask: bool,
        how: CtrlWrite,
    },
    /// Programs entry `index` (modulo the table size plus one: one past the end too).
    Entry {
        index: u16,
        lo: u32,
        hi: u32,
        data: u32,
        masked: bool,
    },
    Mask {
        index: u16,
        masked: bool,
    },
    Table {
        offset: u32,
        len: AccessLen,
        write: Option<u64>,
    },
    Pba {
        offset: u32,
        len: AccessLen,
        write: Option<u64>,
    },
    /// Anywhere in the table's BAR.
    Bar {
        offset: u32,
        len: AccessLen,
        write: Option<u64>,
    },
    Decode {
        on: bool,
    },
    /// MSI: address, data, Multiple Message Enable and enable.
    Msi {
        enable: bool,
        mme: u8,
        addr: u32,
        data: u16,
    },
    /// MSI's per-vector mask register (where the capability has one).
    MsiMask {
        mask: u32,
    },
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    shape: MsixShape,
    ops: Vec<Op>,
}

/// The guest's view of the table, as the PCI spec defines it.
struct Shadow {
    table: Vec<[u32; 4]>,
    enabled: bool,
    function_mask: bool,
}

impl Shadow {
    fn new(n: usize) -> Self {
        Self {
            table: vec![[0, 0, 0, 1]; n],
            enabled: false,
            function_mask: false,
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let o = offset + i as u64;
            let (e, f, byte) = ((o / 16) as usize, ((o % 16) / 4) as usize, (o % 4) as u32);
            let shift = byte * 8;
            let entry = &mut self.table[e];
            let mut v = (entry[f] & !(0xff << shift)) | (u32::from(*b) << shift);
            if f == 3 {
                v &= 1;
            }
            entry[f] = v;
        }
    }
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let o = offset + i;
                let e = self.table[(o / 16) as usize][((o % 16) / 4) as usize];
                (e >> ((o % 4) * 8)) as u8
            })
            .collect()
    }
}

fn region_size(bir: u8) -> Option<u64> {
    match bir {
        0 => Some(BAR0_SIZE),
        3 => Some(BAR3_SIZE),
        4 => Some(BAR4_SIZE),
        _ => None,
    }
}

fn fits(bir: u8, off: u64, len: u64) -> bool {
    region_size(bir).is_some_and(|s| off + len <= s)
}

fuzz_target!(|input: Input| {
    let shape = input.shape;
    let h = Harness::new(shape);
    let n = usize::from(shape.table_size());
    let table_len = n as u64 * 16;
    let pba_len = (n as u64).div_ceil(64) * 8;
    let live = shape.hw() > 0
        && fits(shape.table_bir(), shape.table_offset(), table_len)
        && fits(shape.pba_bir(), shape.pba_offset(), pba_len);
    let ids = h.capability_ids();
    assert_eq!(
        ids.contains(&0x11),
        live,
        "MSI-X shown: {ids:x?}, {shape:?}"
    );
    assert_eq!(
        ids.contains(&0x05),
        shape.msi_vectors() > 0,
        "MSI shown: {ids:x?}, {shape:?}"
    );
    let mut shadow = Shadow::new(n);
    let mut decode = false;
    let table_bar = usize::from(shape.table_bir());
    let pba_bar = usize::from(shape.pba_bir());
    let (t0, p0) = (shape.table_offset(), shape.pba_offset());
    let in_table =
        |o: u64, len: usize| len > 0 && len <= 8 && o >= t0 && o + len as u64 <= t0 + table_len;
    let in_pba =
        |o: u64, len: usize| len > 0 && len <= 8 && o >= p0 && o + len as u64 <= p0 + pba_len;

    for op in input.ops.into_iter().take(256) {
        // (BAR, offset in the BAR, len, write) of the MMIO access this op makes.
        let mut access: Option<(usize, u64, usize, Option<u64>)> = None;
        match op {
            Op::Control { enable, mask, how } => {
                let ctrl = (u16::from(enable) << 15) | (u16::from(mask) << 14);
                let mut dev = h.dev();
                match how {
                    CtrlWrite::Dword => {
                        dev.write_config(MSIX_CAP, 0, &(u32::from(ctrl) << 16).to_le_bytes())
                    }
                    CtrlWrite::Word => dev.write_config(MSIX_CAP, 2, &ctrl.to_le_bytes()),
                    CtrlWrite::HighByte => dev.write_config(MSIX_CAP, 3, &[(ctrl >> 8) as u8]),
                }
            }
            Op::Entry {
                index,
                lo,
                hi,
                data,
                masked,
            } => {
                let e = u64::from(index) % (n as u64 + 1);
                let mut dev = h.dev();
                let Some(base) = bar_base(&dev, table_bar) else {
                    continue;
                };
                for (i, v) in [lo, hi, data, u32::from(masked)].into_iter().enumerate() {
                    let o = t0 + e * 16 + i as u64 * 4;
                    bar_access(&mut dev, base, o, 4, Some(u64::from(v)));
                    if live && decode && in_table(o, 4) {
                        shadow.write(o - t0, &v.to_le_bytes());
                    }
                }
            }
            Op::Mask { index, masked } => {
                let e = u64::from(index) % (n as u64 + 1);
                access = Some((table_bar, t0 + e * 16 + 12, 4, Some(u64::from(masked))));
            }
            Op::Table { offset, len, write } => {
                let o = t0 + u64::from(offset) % (table_len + 16);
                access = Some((table_bar, o, len.bytes(), write));
            }
            Op::Pba { offset, len, write } => {
                let o = p0 + u64::from(offset) % (pba_len + 16);
                access = Some((pba_bar, o, len.bytes(), write));
            }
            Op::Bar { offset, len, write } => {
                let size = region_size(shape.table_bir()).unwrap_or(BAR0_SIZE);
                access = Some((
                    table_bar,
                    u64::from(offset) % (size + 16),
                    len.bytes(),
                    write,
                ));
            }
            Op::Decode { on } => {
                h.dev().write_config(0x04, 0, &[if on { 0x2 } else { 0x0 }]);
                decode = on;
            }
            Op::Msi {
                enable,
                mme,
                addr,
                data,
            } => {
                let mut dev = h.dev();
                let data_at = MSI_CAP + shape.msi_data_at();
                dev.write_config(MSI_CAP + 4, 0, &(addr | 0xfee0_0000).to_le_bytes());
                if shape.msi_64bit {
                    dev.write_config(MSI_CAP + 8, 0, &0u32.to_le_bytes());
                }
                dev.write_config(data_at, 0, &data.to_le_bytes());
                let ctrl = u16::from(enable) | (u16::from(mme & 7) << 4);
                dev.write_config(MSI_CAP, 2, &ctrl.to_le_bytes());
            }
            Op::MsiMask { mask } => {
                let mask_at = MSI_CAP + shape.msi_data_at() + 4;
                h.dev().write_config(mask_at, 0, &mask.to_le_bytes());
            }
            Op::Reset => {
                h.reset();
                shadow = Shadow::new(n);
                decode = false;
            }
        }
        if let Some((bar, offset, len, write)) = access {
            let mut dev = h.dev();
            if let Some(base) = bar_base(&dev, bar) {
                let mut buf = [0u8; 16];
                match write {
                    Some(v) => {
                        bar_access(&mut dev, base, offset, len, Some(v));
                        let mut bytes = v.to_le_bytes().to_vec();
                        bytes.extend_from_slice(&v.rotate_left(32).to_le_bytes());
                        if live && decode && bar == table_bar && in_table(offset, len) {
                            shadow.write(offset - t0, &bytes[..len]);
                        }
                    }
                    None => {
                        devices::bus::BusDevice::read(&mut *dev, base, offset, &mut buf[..len]);
                        let got = &buf[..len];
                        if live && decode && bar == table_bar && in_table(offset, len) {
                            assert_eq!(
                                got,
                                &shadow.read(offset - t0, len)[..],
                                "table at {offset:#x}+{len}"
                            );
                        } else if live
                            && decode
                            && bar == pba_bar
                            && in_pba(offset, len)
                            && !(bar == table_bar
                                && offset < t0 + table_len
                                && offset + len as u64 > t0)
                        {
                            assert!(got.iter().all(|&b| b == 0), "PBA at {offset:#x}: {got:x?}");
                        }
                    }
                }
            }
        }
        h.check();
        if !live {
            continue;
        }
        // What the guest reads back is the state the routes must follow.
        let ctrl = h.dev().read_config(MSIX_CAP) >> 16;
        shadow.enabled = ctrl & 0x8000 != 0;
        shadow.function_mask = ctrl & 0x4000 != 0;
        let msi_on = h.dev().read_config(MSI_CAP) & (1 << 16) != 0;
        if !msi_on {
            let mut want = Vec::new();
            if shadow.enabled && !shadow.function_mask {
                for e in shadow.table.iter().take(shape.hw() as usize) {
                    if e[3] & 1 == 0 {
                        want.push((e[0], e[1], e[2]));
                    }
                }
            }
            want.sort_unstable();
            let mut got: Vec<_> =
                h.vm.routes()
                    .into_values()
                    .map(|m| (m.address_lo, m.address_hi, m.data))
                    .collect();
            got.sort_unstable();
            assert_eq!(got, want, "routes against the table");
        }
    }
    h.teardown();
});

/// Where BAR `index` decodes for a trapped access now.
fn bar_base(dev: &devices::vfio::device::VfioPciDevice, index: usize) -> Option<u64> {
    dev.bar_summaries()
        .iter()
        .find(|b| b.index == index)
        .map(|b| b.addr)
}
