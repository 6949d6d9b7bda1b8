//! Config reads and writes of 1, 2 and 4 bytes at any offset of the 4 KiB space
//! (standard and extended), through ECAM and through 0xCF8/0xCFC as the guest makes them,
//! plus the device's `PciDevice` entry points called with what no bridge sends (any
//! register index, byte offset and length). Every read must return the device's dword's
//! bytes (all-ones where the access crosses a dword), and `Harness::check` must hold
//! after each access.
#![no_main]

use arbitrary::Arbitrary;
use devices::pci::PciDevice;
use libfuzzer_sys::fuzz_target;
use passvm_fuzz::{Harness, MsixShape, Width};

#[derive(Arbitrary, Debug)]
enum Via {
    Ecam,
    Ports,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        off: u16,
        width: Width,
        via: Via,
    },
    Write {
        off: u16,
        width: Width,
        value: u32,
        via: Via,
    },
    Raw {
        reg: u16,
        huge: bool,
        offset: u8,
        data: Vec<u8>,
    },
    RawRead {
        reg: u16,
        huge: bool,
    },
    Reset,
}

fn reg_index(reg: u16, huge: bool) -> usize {
    if huge {
        usize::MAX - usize::from(reg)
    } else {
        usize::from(reg)
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness::new(MsixShape::DEFAULT);
    for op in ops.into_iter().take(512) {
        match op {
            Op::Read { off, width, via } => {
                let len = width.bytes();
                let (got, reach) = match via {
                    Via::Ecam => (h.ecam_read(off, len), off & 0xfff),
                    // Mechanism #1 selects a dword of the first 256 bytes.
                    Via::Ports => (h.port_read(off, len), off & 0xff),
                };
                let byte = usize::from(off & 3);
                let got = &got.to_le_bytes()[..len];
                if byte + len <= 4 {
                    let dword = h.dev().read_config(usize::from(reach & !3));
                    assert_eq!(
                        got,
                        &dword.to_le_bytes()[byte..byte + len],
                        "{via:?} read of {len} at {off:#x}"
                    );
                } else {
                    assert!(
                        got.iter().all(|&b| b == 0xff),
                        "{via:?} {off:#x}+{len}: {got:x?}"
                    );
                }
            }
            Op::Write {
                off,
                width,
                value,
                via,
            } => {
                let data = &value.to_le_bytes()[..width.bytes()];
                match via {
                    Via::Ecam => h.ecam_write(off, data),
                    Via::Ports => h.port_write(off, data),
                }
            }
            Op::Raw {
                reg,
                huge,
                offset,
                data,
            } => {
                let data = &data[..data.len().min(8)];
                h.dev()
                    .write_config_register(reg_index(reg, huge), u64::from(offset), data);
            }
            Op::RawRead { reg, huge } => {
                let v = h.dev().read_config_register(reg_index(reg, huge));
                if huge || reg >= 1024 {
                    assert_eq!(v, 0xffff_ffff, "register {reg} (huge {huge})");
                }
            }
            Op::Reset => h.reset(),
        }
        h.check();
    }
    h.teardown();
});
