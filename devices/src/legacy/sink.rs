//! A device that accepts writes and answers reads with a fixed byte.

use crate::bus::BusDevice;

/// Claims a port range so guest probes of it are answered quietly instead of being logged
/// as unhandled: the 0x80 POST-code port (Linux writes it as an I/O delay) is the usual one.
#[derive(Debug, Clone, Copy)]
pub struct Sink {
    read_value: u8,
}

impl Sink {
    /// A sink whose reads return `read_value` in every byte.
    pub fn new(read_value: u8) -> Self {
        Self { read_value }
    }
}

impl BusDevice for Sink {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(self.read_value);
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixed_value_and_swallows_writes() {
        let mut s = Sink::new(0xff);
        s.write(0x80, 0, &[0x12]);
        let mut b = [0u8; 2];
        s.read(0x80, 0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }
}
