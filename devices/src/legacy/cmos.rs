//! A minimal MC146818 CMOS/RTC on ports 0x70 (index) / 0x71 (data).
//!
//! It answers the clock registers with the host's UTC time in BCD, 24-hour mode, so a guest
//! that reads the wall clock from CMOS at boot gets a sane date, and reports "update not in
//! progress" so the read loops terminate. CMOS RAM beyond the clock reads as 0; there is no
//! alarm, periodic interrupt or NVRAM persistence. Bit 7 of the index port (the NMI mask) is
//! accepted and ignored.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

/// Index port.
pub const CMOS_BASE: u64 = 0x70;
/// Index + data.
pub const CMOS_PORTS: u64 = 2;

const REG_B_24H: u8 = 0x02;
const REG_D_VALID: u8 = 0x80;

/// The CMOS device.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

fn host_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bcd(v: u64) -> u8 {
    // Every caller passes a value below 100.
    (((v / 10) << 4) | (v % 10)) as u8
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Howard Hinnant's algorithm, shifted so the era arithmetic stays unsigned.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    /// A CMOS whose clock follows the host's.
    pub fn new() -> Self {
        Self {
            index: 0,
            ram: [0; 128],
            now: host_now,
        }
    }

    fn clock_register(&self, reg: u8) -> Option<u8> {
        let t = (self.now)();
        let days = t / 86_400;
        let secs = t % 86_400;
        let (year, month, day) = civil_from_days(days);
        Some(match reg {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            0x06 => bcd((days + 4) % 7 + 1), // 1970-01-01 was a Thursday; Sunday = 1
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year % 100),
            0x0a => 0x26, // 32.768 kHz base, 1024 Hz rate, UIP clear
            0x0b => REG_B_24H,
            0x0c => 0,
            0x0d => REG_D_VALID,
            0x32 => bcd(year / 100 % 100),
            _ => return None,
        })
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.index,
            1 => self
                .clock_register(self.index)
                .unwrap_or(self.ram[usize::from(self.index)]),
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = v & 0x7f,
            // Clock and status registers are read-only here; the rest is scratch RAM.
            1 if self.clock_register(self.index).is_none() => self.ram[usize::from(self.index)] = v,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_reg(c: &mut Cmos, reg: u8) -> u8 {
        c.write(CMOS_BASE, 0, &[reg | 0x80]); // with the NMI-disable bit, as Linux does
        let mut b = [0];
        c.read(CMOS_BASE, 1, &mut b);
        b[0]
    }

    #[test]
    fn clock_reads_bcd_utc() {
        // 2026-11-25 20:14:47 UTC, a Wednesday.
        let mut c = Cmos {
            now: || 1_795_637_687,
            ..Cmos::new()
        };
        let got: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&r| read_reg(&mut c, r))
            .collect();
        assert_eq!(got, [0x47, 0x14, 0x20, 0x04, 0x25, 0x11, 0x26, 0x20]);
        assert_eq!(read_reg(&mut c, 0x0a) & 0x80, 0, "update not in progress");
        assert_eq!(read_reg(&mut c, 0x0b), REG_B_24H, "BCD, 24-hour");
    }

    #[test]
    fn leap_day_and_epoch() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn scratch_ram_keeps_writes_clock_ignores_them() {
        let mut c = Cmos::new();
        c.write(CMOS_BASE, 0, &[0x40]);
        c.write(CMOS_BASE, 1, &[0x5a]);
        assert_eq!(read_reg(&mut c, 0x40), 0x5a);
        c.write(CMOS_BASE, 0, &[0x0b]);
        c.write(CMOS_BASE, 1, &[0x06]);
        assert_eq!(read_reg(&mut c, 0x0b), REG_B_24H);
    }
}
