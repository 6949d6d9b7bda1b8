//! Rate-limited logging for paths a guest can drive: a guest that loops on a refused BAR
//! move or a bad MSI-X entry must not fill the host's journal.
//!
//! Each call site of [`warn_limited!`](crate::warn_limited) logs its first
//! [`FIRST`] events, then only the 100th, the 1000th and so on, each with the count so
//! far, so the log still says that (and how often) it goes on.

use std::sync::atomic::{AtomicU64, Ordering};

/// Events of one call site that are always logged.
pub const FIRST: u64 = 5;

/// The event count of one call site.
#[derive(Debug, Default)]
pub struct LogLimit {
    seen: AtomicU64,
}

impl LogLimit {
    /// A count at zero (`const`, for a `static` per call site).
    pub const fn new() -> Self {
        Self {
            seen: AtomicU64::new(0),
        }
    }

    /// Counts one event; returns its number when it is one to log.
    pub fn tick(&self) -> Option<u64> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        (n <= FIRST || is_power_of_ten(n)).then_some(n)
    }
}

fn is_power_of_ten(mut n: u64) -> bool {
    while n >= 10 && n % 10 == 0 {
        n /= 10;
    }
    n == 1
}

/// `log::log!` at `level` at most [`FIRST`] times per call site, then at every power of
/// ten with the count (see the module docs).
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if let Some(n) = LIMIT.tick() {
            if n <= $crate::log_limit::FIRST {
                log::log!($level, $($arg)+);
            } else {
                log::log!(
                    $level,
                    "{} ({n} times so far; only some are logged)",
                    format_args!($($arg)+)
                );
            }
        }
    }};
}

/// [`log_limited!`](crate::log_limited) at warning level.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!(log::Level::Warn, $($arg)+) };
}

/// [`log_limited!`](crate::log_limited) at error level.
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limited!(log::Level::Error, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_few_then_powers_of_ten() {
        let l = LogLimit::new();
        let logged: Vec<u64> = (0..20_000).filter_map(|_| l.tick()).collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5, 10, 100, 1000, 10_000]);
    }
}
