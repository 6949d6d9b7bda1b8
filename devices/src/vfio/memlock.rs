//! RLIMIT_MEMLOCK: VFIO pins all of guest RAM, and both IOMMU backends charge it to the
//! user. One check, used twice: by discovery before anything is opened (so `--dry-run`
//! and `passvm devices` can say it) and by the DMA map right before pinning.

use thiserror::Error;

use crate::size::human;

/// `CAP_IPC_LOCK` in the capability bit sets (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// What this process may pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// The soft RLIMIT_MEMLOCK in bytes; `None` = unlimited.
    pub memlock: Option<u64>,
    /// Whether the process has `CAP_IPC_LOCK`, which lifts the limit for VFIO pinning.
    pub ipc_lock: bool,
}

impl HostLimits {
    /// The limits of the running process.
    pub fn current() -> Self {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `rl`, a valid exclusively borrowed struct.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
        let memlock = if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
            None
        } else {
            Some(rl.rlim_cur)
        };
        HostLimits {
            memlock,
            ipc_lock: has_cap_ipc_lock(),
        }
    }

    /// Fails when pinning `bytes` of guest RAM would exceed the limit.
    pub fn check(&self, bytes: u64) -> Result<(), MemlockShortfall> {
        match self.memlock {
            Some(limit) if !self.ipc_lock && bytes > limit => {
                Err(MemlockShortfall { limit, need: bytes })
            }
            _ => Ok(()),
        }
    }
}

fn has_cap_ipc_lock() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Guest RAM does not fit in what RLIMIT_MEMLOCK lets VFIO pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{}; {}", self.reason(), self.fix())]
pub struct MemlockShortfall {
    /// The soft limit, bytes.
    pub limit: u64,
    /// What must be pinned, bytes.
    pub need: u64,
}

impl MemlockShortfall {
    /// What is wrong, with both numbers.
    pub fn reason(&self) -> String {
        format!(
            "RLIMIT_MEMLOCK is {} but VFIO must pin all {} of guest memory",
            human(self.limit),
            human(self.need)
        )
    }

    /// How to fix it, with the `ulimit -l` value (KiB) that would do.
    pub fn fix(&self) -> String {
        let kib = self.need.div_ceil(1024);
        format!(
            "raise it: `ulimit -l {kib}` (or unlimited) in the launching shell, `<user> hard memlock {kib}` \
             in /etc/security/limits.conf, or LimitMEMLOCK= in a systemd unit; running as root \
             (CAP_IPC_LOCK) lifts the limit"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_low_limit_names_the_numbers() {
        let l = HostLimits {
            memlock: Some(64 << 20),
            ipc_lock: false,
        };
        let s = l.check(1 << 30).unwrap_err().to_string();
        assert!(s.contains("64 MiB"), "{s}");
        assert!(s.contains("1 GiB"), "{s}");
        assert!(s.contains("ulimit -l 1048576"), "{s}");
        let s = l.check((1 << 30) + 1).unwrap_err().to_string();
        assert!(
            s.contains("ulimit -l 1048577"),
            "rounded up to whole KiB: {s}"
        );
    }

    #[test]
    fn enough_unlimited_or_capable_is_fine() {
        let enough = HostLimits {
            memlock: Some(2 << 30),
            ipc_lock: false,
        };
        assert!(enough.check(1 << 30).is_ok());
        assert!(enough.check(2 << 30).is_ok(), "exactly the limit fits");
        let unlimited = HostLimits {
            memlock: None,
            ipc_lock: false,
        };
        assert!(unlimited.check(1 << 40).is_ok());
        let cap = HostLimits {
            memlock: Some(0),
            ipc_lock: true,
        };
        assert!(cap.check(1 << 30).is_ok());
    }

    #[test]
    fn current_limits_read() {
        // Whatever the CI user has, the call must succeed and be self-consistent.
        let l = HostLimits::current();
        if let Some(m) = l.memlock {
            assert!(l.check(m).is_ok());
        }
    }
}
