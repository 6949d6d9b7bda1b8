//! Why a VM stopped, how that maps to passvm's exit status, and the one-shot latch every
//! thread uses to ask for the stop.
//!
//! | status | reason                                                                 |
//! |--------|------------------------------------------------------------------------|
//! | 0      | the guest rebooted (i8042 reset, KVM reset event) or powered off        |
//! | 1      | passvm failed: setup error, KVM entry failure, vCPU internal error      |
//! | 2      | bad command line (clap uses 2 too), or a `--device` that cannot be assigned |
//! | 3      | the guest triple-faulted (KVM_EXIT_SHUTDOWN)                            |
//! | 4      | the guest kernel panicked                                               |
//! | 5      | a passvm thread made a system call its seccomp filter denies (`seccomp.rs`) |
//! | 0      | stopped by the API: `vm.shutdown` or `vmm.shutdown` (`api/`)            |
//! | 128+N  | stopped by signal N: 129 SIGHUP, 130 SIGINT, 143 SIGTERM (shell rule)   |
//!
//! The first reason recorded wins: a Linux guest whose keyboard-controller reset "fails"
//! falls through to a deliberate triple fault, and the reset that came first is the truth.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status for a bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a VMM-side failure.
pub const EXIT_ERROR: u8 = 1;
/// Exit status when a passed-through device reported an error (AER).
pub const EXIT_DEVICE_ERROR: u8 = 6;
/// Exit status when a thread made a system call its seccomp filter denies: set by the
/// SIGSYS handler, which cannot go through the normal teardown.
pub const EXIT_SECCOMP: u8 = 5;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 0xFE, or a KVM reset system event).
    GuestReboot,
    /// The guest asked to power off (KVM shutdown system event).
    GuestPoweroff,
    /// The guest kernel panicked; the text is its panic message when known.
    GuestPanic(String),
    /// A vCPU triple-faulted.
    TripleFault {
        /// The vCPU that faulted.
        vcpu: u8,
    },
    /// passvm received a termination signal.
    Signal(i32),
    /// The VMM itself could not continue (event loop, threads).
    VmmError(String),
    /// A passed-through device reported an error (PCIe AER, signalled by VFIO's error
    /// interrupt): the VM stops, as QEMU's does, rather than run on with a device in an
    /// unknown state.
    DeviceError {
        /// The device's name (as the plan printed it).
        device: String,
        /// How many errors VFIO signalled.
        count: u64,
    },
    /// The control API asked the VM to stop (`vm.shutdown` or `vmm.shutdown`, the
    /// endpoint's name): an orderly stop its user asked for, so exit status 0.
    ApiShutdown(&'static str),
    /// A vCPU could not continue.
    VcpuError {
        /// The failing vCPU.
        vcpu: u8,
        /// What happened.
        message: String,
    },
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn code(&self) -> u8 {
        match self {
            Self::GuestReboot | Self::GuestPoweroff | Self::ApiShutdown(_) => 0,
            Self::VcpuError { .. } | Self::VmmError(_) => EXIT_ERROR,
            Self::TripleFault { .. } => 3,
            Self::GuestPanic(_) => 4,
            Self::DeviceError { .. } => EXIT_DEVICE_ERROR,
            Self::Signal(sig) => u8::try_from(128 + sig).unwrap_or(EXIT_ERROR),
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GuestReboot => f.write_str("guest requested reboot"),
            Self::GuestPoweroff => f.write_str("guest powered off"),
            Self::GuestPanic(m) if m.is_empty() => f.write_str("guest kernel panicked"),
            Self::GuestPanic(m) => write!(f, "guest kernel panicked: {m}"),
            Self::TripleFault { vcpu } => write!(
                f,
                "guest triple-faulted on vCPU {vcpu} (a crash before the kernel's own handlers, \
                 or a reboot method passvm does not emulate: use reboot=k)"
            ),
            Self::Signal(s) => write!(f, "stopped by {}", signal_name(*s)),
            Self::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu} failed: {message}"),
            Self::VmmError(m) => f.write_str(m),
            Self::ApiShutdown(endpoint) => write!(f, "stopped through the API ({endpoint})"),
            Self::DeviceError { device, count } => write!(
                f,
                "{device}: the device reported {count} PCIe error{} (AER, signalled by VFIO); \
                 the VM is stopped so the guest does not go on with a device in an unknown \
                 state: the host's kernel log (dmesg) has the AER report",
                if *count == 1 { "" } else { "s" }
            ),
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// The stop latch shared by the vCPU threads, the devices and the event loop.
pub struct VmExit {
    reason: Mutex<Option<ExitReason>>,
    panic: Mutex<Option<String>>,
    stopping: AtomicBool,
    evt: EventFd,
}

impl VmExit {
    /// A latch with no reason yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            panic: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is already recorded, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            log::debug!("stop requested: {reason}");
            *slot = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        drop(slot);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// Remembers that the guest printed a kernel panic. A guest with `panic=N` reboots after
    /// its panic, and the panic is what the user needs to hear about, so a later reboot or
    /// triple fault is reported as this panic.
    pub fn note_panic(&self, message: String) {
        let mut p = self.panic.lock().unwrap_or_else(|p| p.into_inner());
        p.get_or_insert(message);
    }

    /// Whether a stop has been requested (cheap; checked by vCPUs around every `KVM_RUN`).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The eventfd written on every request.
    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    /// The recorded reason, with a noted panic taking the place of the reboot or triple
    /// fault that followed it.
    pub fn reason(&self) -> Option<ExitReason> {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let panic = self.panic.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match (reason, panic) {
            (Some(ExitReason::GuestPanic(m)), Some(p)) if m.is_empty() => {
                Some(ExitReason::GuestPanic(p))
            }
            (None | Some(ExitReason::GuestReboot | ExitReason::TripleFault { .. }), Some(m)) => {
                Some(ExitReason::GuestPanic(m))
            }
            (r, _) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_per_cause() {
        assert_eq!(ExitReason::GuestReboot.code(), 0);
        assert_eq!(ExitReason::GuestPoweroff.code(), 0);
        assert_eq!(
            ExitReason::VcpuError {
                vcpu: 0,
                message: "x".into()
            }
            .code(),
            1
        );
        assert_eq!(ExitReason::TripleFault { vcpu: 1 }.code(), 3);
        assert_eq!(ExitReason::GuestPanic(String::new()).code(), 4);
        assert_eq!(ExitReason::Signal(libc::SIGINT).code(), 130);
        assert_eq!(ExitReason::Signal(libc::SIGTERM).code(), 143);
        assert_eq!(ExitReason::ApiShutdown("vm.shutdown").code(), 0);
        assert_eq!(
            ExitReason::ApiShutdown("vmm.shutdown").to_string(),
            "stopped through the API (vmm.shutdown)"
        );
        assert_eq!(
            ExitReason::GuestReboot.to_string(),
            "guest requested reboot"
        );
        assert_eq!(
            ExitReason::Signal(libc::SIGTERM).to_string(),
            "stopped by SIGTERM"
        );
    }

    #[test]
    fn first_reason_wins_but_a_panic_explains_the_reboot() {
        let e = VmExit::new().unwrap();
        assert!(!e.is_stopping());
        e.request(ExitReason::GuestReboot);
        e.request(ExitReason::TripleFault { vcpu: 0 });
        assert!(e.is_stopping());
        assert_eq!(e.reason(), Some(ExitReason::GuestReboot));
        assert!(e.evt().read().unwrap() >= 1, "the event loop is woken");
        e.note_panic("Attempted to kill init!".into());
        assert_eq!(
            e.reason(),
            Some(ExitReason::GuestPanic("Attempted to kill init!".into()))
        );

        let e = VmExit::new().unwrap();
        e.request(ExitReason::Signal(libc::SIGTERM));
        e.note_panic("late".into());
        assert_eq!(
            e.reason(),
            Some(ExitReason::Signal(libc::SIGTERM)),
            "a signal is not a panic"
        );
    }
}
