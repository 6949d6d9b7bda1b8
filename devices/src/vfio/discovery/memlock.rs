//! RLIMIT_MEMLOCK: VFIO pins all of guest RAM, and both backends charge it to the user.

use super::assignable::{Problem, ProblemKind};

/// `CAP_IPC_LOCK` in the capability bit sets.
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
}

fn has_cap_ipc_lock() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Formats a byte count the way `--memory` takes it.
pub fn human(bytes: u64) -> String {
    const G: u64 = 1 << 30;
    const M: u64 = 1 << 20;
    const K: u64 = 1 << 10;
    if bytes >= G && bytes % G == 0 {
        format!("{}G", bytes / G)
    } else if bytes >= M && bytes % M == 0 {
        format!("{}M", bytes / M)
    } else if bytes >= K {
        format!("{}K", bytes.div_ceil(K))
    } else {
        format!("{bytes}B")
    }
}

/// A problem when `guest_memory` bytes cannot be pinned under `limits`.
pub fn memlock_problem(limits: &HostLimits, guest_memory: u64) -> Option<Problem> {
    if limits.ipc_lock || guest_memory == 0 {
        return None;
    }
    let limit = limits.memlock?;
    if limit >= guest_memory {
        return None;
    }
    let kib = guest_memory.div_ceil(1024);
    Some(Problem {
        kind: ProblemKind::Memlock,
        reason: format!(
            "RLIMIT_MEMLOCK is {} but VFIO must pin all {} of guest memory",
            human(limit),
            human(guest_memory)
        ),
        fix: format!(
            "raise it: `ulimit -l {kib}` (or unlimited) in the launching shell, `<user> hard memlock {kib}` \
             in /etc/security/limits.conf, or LimitMEMLOCK= in a systemd unit; running as root \
             (CAP_IPC_LOCK) lifts the limit"
        ),
    })
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
        let p = memlock_problem(&l, 1 << 30).unwrap();
        let s = p.to_string();
        assert!(s.contains("64M"), "{s}");
        assert!(s.contains("1G"), "{s}");
        assert!(s.contains("ulimit -l 1048576"), "{s}");
    }

    #[test]
    fn enough_unlimited_or_capable_is_fine() {
        let enough = HostLimits {
            memlock: Some(2 << 30),
            ipc_lock: false,
        };
        assert!(memlock_problem(&enough, 1 << 30).is_none());
        let unlimited = HostLimits {
            memlock: None,
            ipc_lock: false,
        };
        assert!(memlock_problem(&unlimited, 1 << 40).is_none());
        let cap = HostLimits {
            memlock: Some(0),
            ipc_lock: true,
        };
        assert!(memlock_problem(&cap, 1 << 30).is_none());
    }

    #[test]
    fn current_limits_read() {
        // Whatever the CI user has, the call must succeed and be self-consistent.
        let l = HostLimits::current();
        if let Some(m) = l.memlock {
            assert!(memlock_problem(&l, m).is_none());
        }
    }
}
