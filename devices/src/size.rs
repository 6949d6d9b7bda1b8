//! Sizes every layer shares: the page size, and the one way passvm writes a byte count
//! in a message.

/// The host and guest base page size on x86_64 (mmap, memslot and BAR granularity).
pub const PAGE_SIZE: u64 = 0x1000;

/// "16 MiB", "3 GiB", "12 KiB", or the byte count when it is not a whole number of KiB.
pub fn human(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        0 => "0 bytes".to_string(),
        b if b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_the_largest_whole_unit() {
        assert_eq!(human(0), "0 bytes");
        assert_eq!(human(3 << 30), "3 GiB");
        assert_eq!(human(1536 << 20), "1536 MiB");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(12 << 10), "12 KiB");
        assert_eq!(human((1 << 30) + 1), "1073741825 bytes");
    }
}
