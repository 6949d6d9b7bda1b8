//! Signals: termination requests through a signalfd, and the vCPU kick.
//!
//! SIGINT, SIGTERM and SIGHUP are blocked in the main thread first thing ([`block`]),
//! before any other thread exists, so every thread inherits the mask and the signals
//! queue on a signalfd that the event loop reads like any other event: no
//! async-signal-safety concerns, and the normal teardown (terminal restore, device
//! reset) runs. (signalfd needs no UNIX sockets, unlike
//! signal-hook's iterator, so it also works in the bed's minimal L1 kernel.)
//!
//! SIGUSR1 travels the same way and asks every vCPU for a state report
//! (`vcpu_state.rs`); it does not stop the VM. SIGPWR ("power failure", what init systems
//! and UPS daemons send) presses the guest's ACPI power button, so the guest shuts down
//! the way its userspace handles the button; the VM ends when the guest powers off.
//!
//! The kick is SIGRTMIN, left unblocked: its handler only sets `immediate_exit` in the
//! current vCPU's `kvm_run` (see `vcpu.rs`), which makes an in-progress or imminent
//! `KVM_RUN` return `EINTR`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::sync::Arc;

use devices::power::PowerButton;

use crate::exit::{ExitReason, VmExit};
use crate::vcpu_state::StateRequests;

/// The signals that stop the VM.
pub const TERMINATION_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The signal that asks for a state report of every vCPU.
pub const REPORT_SIGNAL: i32 = libc::SIGUSR1;

/// The signal that presses the guest's power button.
pub const POWER_BUTTON_SIGNAL: i32 = libc::SIGPWR;

/// Every signal the signalfd takes (and blocks): the termination signals, the report and
/// the power button.
const SIGNALFD_SIGNALS: [i32; 5] = [
    TERMINATION_SIGNALS[0],
    TERMINATION_SIGNALS[1],
    TERMINATION_SIGNALS[2],
    REPORT_SIGNAL,
    POWER_BUTTON_SIGNAL,
];

/// A signalfd for [`TERMINATION_SIGNALS`] and [`REPORT_SIGNAL`], which it blocks for the
/// calling thread.
pub struct TerminationSignals {
    fd: OwnedFd,
    exit: Arc<VmExit>,
    reports: Arc<StateRequests>,
    button: Arc<PowerButton>,
}

impl TerminationSignals {
    /// Blocks the signals ([`block`]) and opens the signalfd. Call before spawning threads.
    pub fn new(
        exit: Arc<VmExit>,
        reports: Arc<StateRequests>,
        button: Arc<PowerButton>,
    ) -> io::Result<Self> {
        let set = block()?;
        // SAFETY: creating a new signalfd from a valid sigset; the result is checked.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            exit,
            reports,
            button,
        })
    }

    /// Reads one queued signal, if any.
    fn read_signal(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl MutEventSubscriber for TerminationSignals {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!(
                "cannot watch the signalfd ({e:?}); SIGINT/SIGTERM will not stop the VM cleanly"
            );
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Some(sig) = self.read_signal() {
            self.handle(sig);
        }
    }
}

impl TerminationSignals {
    /// What one signal does: a report, a button press, or the VM's end.
    fn handle(&self, sig: i32) {
        if sig == REPORT_SIGNAL {
            // The main loop sees the new generation and kicks the vCPUs.
            self.reports.request();
            log::warn!("SIGUSR1: every vCPU reports its state");
        } else if sig == POWER_BUTTON_SIGNAL {
            match self.button.press() {
                Ok(()) => log::warn!(
                    "SIGPWR: pressed the guest's power button; the VM ends when the guest powers off"
                ),
                Err(e) => log::error!("SIGPWR: cannot press the power button: {e}"),
            }
        } else {
            self.exit.request(ExitReason::Signal(sig));
        }
    }
}

/// Blocks the signalfd's signals in the calling thread and returns their set.
///
/// The VMM calls this first, before building the VM: until the signals are blocked their
/// default action applies, and for SIGUSR1 and SIGPWR that is to terminate the process, so
/// a state report asked for during a long start-up (pinning a large guest) killed passvm.
/// Blocked, they queue and the event loop reads them from the signalfd once it runs.
pub fn block() -> io::Result<libc::sigset_t> {
    let set = vmm_sys_util::signal::create_sigset(&SIGNALFD_SIGNALS)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: `set` is a valid sigset; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_sigterm_is_read_from_the_signalfd() {
        let exit = Arc::new(VmExit::new().unwrap());
        // Block in this test thread only; the signal is directed at it with pthread_kill.
        let reports = Arc::new(StateRequests::default());
        let irq = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let probe = irq.try_clone().unwrap();
        let button = Arc::new(PowerButton::new(irq));
        let sigs = TerminationSignals::new(exit.clone(), reports, button).unwrap();
        // SAFETY: sending a blocked signal to the current thread.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
        assert_eq!(sigs.read_signal(), Some(libc::SIGTERM));
        assert_eq!(sigs.read_signal(), None);
        // SIGPWR presses the button (one write on its irqfd) and stops nothing.
        // SAFETY: sending a blocked signal to the current thread.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGPWR) };
        let sig = sigs.read_signal();
        assert_eq!(sig, Some(libc::SIGPWR));
        sigs.handle(libc::SIGPWR);
        assert_eq!(probe.read().unwrap(), 1, "one press on the GED's irqfd");
        assert_eq!(exit.reason(), None, "the VM goes on");
        // Unblock again so other tests on this thread are unaffected.
        let set = vmm_sys_util::signal::create_sigset(&SIGNALFD_SIGNALS).unwrap();
        // SAFETY: valid sigset.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        assert_eq!(exit.reason(), None);
    }
}
