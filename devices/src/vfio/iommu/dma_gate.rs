//! The DMA gate: guest RAM is pinned and mapped on a helper thread while the guest boots,
//! and a device's Bus Master Enable waits here until the mapping is complete.
//!
//! Why it holds: a PCI function cannot start a memory transaction (DMA, or an MSI, which
//! is a memory write) while its command register's Bus Master Enable bit is clear, and
//! passvm clears that bit when it takes the device (`VfioPciDevice::new`). So the only
//! moment the mapping must be complete is the guest's config write that sets the bit: the
//! device model calls [`DmaGate::wait`] there, and a failed mapping leaves the bit clear
//! (the VM is being stopped with the mapping's error by then). Everything else a guest
//! does before that (its kernel's boot, the device's BAR and config-space setup) runs
//! beside the pinning, which for a large guest is most of the VMM's start-up time.
//!
//! The gate is also the mapping's stop switch: [`DmaGate::cancel`] makes the helper stop
//! between two chunks, so a VM stopped during the mapping does not first pin the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::DmaReport;

/// Where the mapping stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmaState {
    /// The helper thread is still mapping.
    Mapping,
    /// All of guest RAM is mapped.
    Mapped(DmaReport),
    /// The mapping failed (the message is the VM's exit message) or was cancelled.
    Failed(String),
}

/// The mapping's state, shared by the helper thread and the devices.
#[derive(Debug)]
pub struct DmaGate {
    state: Mutex<DmaState>,
    done: Condvar,
    cancelled: AtomicBool,
    /// Bytes to map in all, for a waiting device's log line.
    total: u64,
}

impl DmaGate {
    /// A gate for a mapping of `total` bytes that has not finished.
    pub fn pending(total: u64) -> Self {
        Self {
            state: Mutex::new(DmaState::Mapping),
            done: Condvar::new(),
            cancelled: AtomicBool::new(false),
            total,
        }
    }

    /// A gate that is already open: RAM was mapped before the guest started.
    pub fn open(report: DmaReport) -> Self {
        let gate = Self::pending(report.bytes);
        gate.finish(Ok(report));
        gate
    }

    /// Records the outcome and wakes every waiter. Only the first outcome counts.
    pub fn finish(&self, outcome: Result<DmaReport, String>) {
        let mut state = self.lock();
        if *state == DmaState::Mapping {
            *state = match outcome {
                Ok(r) => DmaState::Mapped(r),
                Err(m) => DmaState::Failed(m),
            };
        }
        drop(state);
        self.done.notify_all();
    }

    /// Blocks until the mapping is complete; `Err` with the failure otherwise. Returns at
    /// once when it already is.
    pub fn wait(&self) -> Result<DmaReport, String> {
        let mut state = self.lock();
        loop {
            match &*state {
                DmaState::Mapping => {}
                DmaState::Mapped(r) => return Ok(*r),
                DmaState::Failed(m) => return Err(m.clone()),
            }
            state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// [`DmaGate::wait`], with the time it blocked.
    pub fn wait_timed(&self) -> (Result<DmaReport, String>, Duration) {
        let t = Instant::now();
        let r = self.wait();
        (r, t.elapsed())
    }

    /// The current state, without blocking.
    pub fn state(&self) -> DmaState {
        self.lock().clone()
    }

    /// Asks the helper to stop after its current chunk.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether [`DmaGate::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Bytes the mapping covers.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DmaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn report() -> DmaReport {
        DmaReport {
            regions: 1,
            bytes: 4096,
            elapsed: Duration::from_millis(3),
        }
    }

    #[test]
    fn a_waiter_blocks_until_the_mapping_finishes() {
        let gate = Arc::new(DmaGate::pending(4096));
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.wait_timed());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "still mapping: the waiter blocks");
        gate.finish(Ok(report()));
        let (r, waited) = waiter.join().unwrap();
        assert_eq!(r, Ok(report()));
        assert!(waited >= Duration::from_millis(40), "{waited:?}");
        assert_eq!(gate.wait(), Ok(report()), "later waits return at once");
    }

    #[test]
    fn a_failure_reaches_every_waiter_and_the_first_outcome_stays() {
        let gate = Arc::new(DmaGate::pending(1 << 30));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let g = gate.clone();
                std::thread::spawn(move || g.wait())
            })
            .collect();
        gate.finish(Err("pinning failed".into()));
        gate.finish(Ok(report()));
        for w in waiters {
            assert_eq!(w.join().unwrap(), Err("pinning failed".into()));
        }
        assert_eq!(gate.state(), DmaState::Failed("pinning failed".into()));
    }

    #[test]
    fn an_open_gate_does_not_block_and_covers_the_report() {
        let gate = DmaGate::open(report());
        assert_eq!(gate.wait(), Ok(report()));
        assert_eq!(gate.total(), 4096);
        assert!(!gate.is_cancelled());
        gate.cancel();
        assert!(gate.is_cancelled());
    }
}
