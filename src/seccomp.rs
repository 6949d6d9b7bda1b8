//! seccomp-bpf filters, one per kind of thread ([`ThreadKind`]), built with rust-vmm's
//! `seccompiler` from the system calls each kind really makes (`seccomp/allowlist.rs`;
//! docs/reliability.md, "seccomp").
//!
//! * `--seccomp on` (the default): a call outside the thread's list traps (SIGSYS). The
//!   handler writes "passvm: seccomp: thread vcpu0 made the denied syscall socket (41)"
//!   to stderr, puts the terminal back and exits with [`EXIT_SECCOMP`]: a denied call is
//!   a passvm bug or a guest that took over a thread, and in both cases the VM must not
//!   go on.
//! * `--seccomp log`: the same lists, but a call outside them is allowed and the kernel
//!   logs it (SECCOMP_RET_LOG: "audit: type=1326 ... syscall=N" in its log, with audit
//!   support); for finding what a list misses without stopping the VM.
//! * `--seccomp off`: no filters.
//!
//! Where each filter goes on: a filter binds the calling thread and the threads it
//! starts afterwards, so each thread installs its own (no TSYNC) at a point where it no
//! longer needs its setup calls: a vCPU at the top of its thread, before the first
//! `KVM_RUN`; the `dma-map` helper at its start (its prefault threads inherit its
//! filter); the VMM thread after every vCPU thread is started (a vCPU started later
//! would be bound by the VMM's list as well as its own) and before the event loop; the
//! `api` thread (`--api-socket`) at its start, before it takes its first connection.

mod allowlist;
mod syscall_names;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::exit::EXIT_SECCOMP;
pub use allowlist::Ioctl;

/// What happens to a system call outside a thread's list (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Denied: SIGSYS, reported with the call's name, and passvm exits.
    #[default]
    On,
    /// Allowed, and logged by the kernel (SECCOMP_RET_LOG).
    Log,
    /// No filters.
    Off,
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Self::On),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            _ => Err(
                "use on (deny what a thread does not need: the default), log (allow it, the \
                 kernel logs it) or off"
                    .into(),
            ),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

impl SeccompMode {
    /// The filter's action for a call outside the list (`None`: no filter).
    fn mismatch_action(self) -> Option<SeccompAction> {
        match self {
            Self::On => Some(SeccompAction::Trap),
            Self::Log => Some(SeccompAction::Log),
            Self::Off => None,
        }
    }
}

/// The kinds of threads passvm runs, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThreadKind {
    /// The main thread once the VM is built: the event loop, then the teardown.
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the device accesses its exits lead to.
    Vcpu,
    /// The `dma-map` helper that pins guest RAM beside the boot, and its prefault threads.
    DmaMap,
    /// The control API's thread (`--api-socket`): its socket, never the VM.
    Api,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::DmaMap,
        ThreadKind::Api,
    ];

    /// The kind's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vmm => "vmm",
            Self::Vcpu => "vcpu",
            Self::DmaMap => "dma-map",
            Self::Api => "api",
        }
    }

    /// The system calls the kind may make (`ioctl` among them, limited by [`Self::ioctls`]).
    pub fn syscalls(self) -> Vec<(&'static str, i64)> {
        let own = match self {
            Self::Vmm => allowlist::VMM,
            Self::Vcpu => allowlist::VCPU,
            Self::DmaMap => allowlist::DMA_MAP,
            Self::Api => allowlist::API,
        };
        let mut all: Vec<(&'static str, i64)> = allowlist::COMMON.to_vec();
        all.extend_from_slice(own);
        all.push(("ioctl", libc::SYS_ioctl));
        all
    }

    /// The ioctls the kind may issue.
    pub fn ioctls(self) -> Vec<Ioctl> {
        match self {
            Self::Vmm => allowlist::vmm_ioctls(),
            Self::Vcpu => allowlist::vcpu_ioctls(),
            Self::DmaMap => allowlist::dma_map_ioctls(),
            Self::Api => allowlist::api_ioctls(),
        }
    }

    /// The rules seccompiler compiles: every call unconditionally, except `ioctl`,
    /// which matches on its request (argument 1). Only the request's low 32 bits are
    /// compared: the kernel reads it as an `unsigned int`.
    fn rules(self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = self
            .syscalls()
            .into_iter()
            .filter(|(_, nr)| *nr != libc::SYS_ioctl)
            .map(|(_, nr)| (nr, Vec::new()))
            .collect();
        let ioctl = self
            .ioctls()
            .into_iter()
            .map(|i| {
                let (op, value) = match i {
                    Ioctl::Request(_, nr) => (SeccompCmpOp::Eq, nr),
                    Ioctl::Family(_, ty) => (SeccompCmpOp::MaskedEq(0xff00), ty << 8),
                };
                SeccompRule::new(vec![SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    op,
                    value,
                )?])
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, ioctl);
        Ok(rules)
    }

    /// The kind's BPF program for `mode` (`None` for [`SeccompMode::Off`]).
    fn compile(self, mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
        let Some(mismatch) = mode.mismatch_action() else {
            return Ok(None);
        };
        let err = |source| SeccompError::Compile {
            kind: self.name(),
            source,
        };
        let filter = SeccompFilter::new(
            self.rules().map_err(err)?,
            mismatch,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(err)?;
        Ok(Some(BpfProgram::try_from(filter).map_err(err)?))
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Building or installing a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused a list (a passvm bug).
    #[error("cannot compile the seccomp filter of the {kind} threads: {source}")]
    Compile {
        /// The thread kind.
        kind: &'static str,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The SIGSYS handler that reports a denied call.
    #[error("cannot install the SIGSYS handler for --seccomp on: {0}")]
    Handler(#[source] std::io::Error),
    /// The kernel refused the filter.
    #[error(
        "cannot install the seccomp filter of thread {thread}: {source}; the kernel needs \
         seccomp filters (CONFIG_SECCOMP_FILTER), and SECCOMP_RET_LOG (Linux 4.14) for \
         --seccomp log; --seccomp off runs without them"
    )]
    Install {
        /// The thread's name.
        thread: String,
        /// seccompiler's error (the errno of prctl or seccomp).
        #[source]
        source: seccompiler::Error,
    },
}

/// The compiled filters of every thread kind, for one VM.
#[derive(Debug, Clone)]
pub struct Filters {
    mode: SeccompMode,
    programs: BTreeMap<ThreadKind, Arc<BpfProgram>>,
}

impl Filters {
    /// Compiles every kind's filter for `mode` (nothing for [`SeccompMode::Off`]). For
    /// [`SeccompMode::On`] it also installs the process's SIGSYS handler, which must be
    /// there before the first filter can trap.
    pub fn new(mode: SeccompMode) -> Result<Self, SeccompError> {
        let mut programs = BTreeMap::new();
        for kind in ThreadKind::ALL {
            if let Some(p) = kind.compile(mode)? {
                programs.insert(kind, Arc::new(p));
            }
        }
        if mode == SeccompMode::On {
            vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
                .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))?;
        }
        Ok(Self { mode, programs })
    }

    /// The mode the filters were built for.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// The filter a thread of `kind` installs on itself.
    pub fn thread(&self, kind: ThreadKind) -> ThreadFilter {
        ThreadFilter {
            kind,
            program: self.programs.get(&kind).cloned(),
        }
    }
}

/// One kind's filter, handed to the thread that installs it ([`ThreadFilter::apply`]).
#[derive(Debug, Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    program: Option<Arc<BpfProgram>>,
}

impl ThreadFilter {
    /// Installs the filter on the calling thread (and the threads it starts from now on);
    /// nothing with `--seccomp off`. The thread's name is kept for the SIGSYS report.
    pub fn apply(&self) -> Result<(), SeccompError> {
        let Some(program) = &self.program else {
            return Ok(());
        };
        let thread = std::thread::current()
            .name()
            .unwrap_or(self.kind.name())
            .to_string();
        remember_thread_name(&thread);
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { thread, source })
    }
}

/// The longest thread name the SIGSYS report shows.
const NAME_LEN: usize = 32;

thread_local! {
    /// This thread's name for the SIGSYS report, set when its filter is installed. A
    /// `const` initialiser of plain bytes: reading it allocates nothing and takes no
    /// lock, so the signal handler may.
    static THREAD_NAME: Cell<([u8; NAME_LEN], usize)> = const { Cell::new(([0; NAME_LEN], 0)) };
}

fn remember_thread_name(name: &str) {
    let mut buf = [0u8; NAME_LEN];
    let n = name.len().min(NAME_LEN);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set((buf, n)));
}

/// `si_code` of a SIGSYS sent by a seccomp filter's trap.
const SYS_SECCOMP: i32 = 1;

/// The SIGSYS fields of `siginfo_t` on x86_64 (`_sigsys` in the kernel's union, which
/// libc does not expose): after the three ints, at the union's 8-byte-aligned start.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// A fixed buffer for the report: formatting without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, v: i64) {
        if v < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut u = v.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The report line for a denied call `nr` on thread `thread`.
fn report_line(thread: &[u8], nr: i64) -> Line {
    let mut l = Line {
        buf: [0; 256],
        len: 0,
    };
    l.push(b"passvm: seccomp: thread ");
    l.push(if thread.is_empty() { b"?" } else { thread });
    l.push(b" made the denied syscall ");
    l.push(syscall_names::name(nr).unwrap_or("unknown").as_bytes());
    l.push(b" (");
    l.push_number(nr);
    l.push(b"); a passvm bug: please report it (--seccomp log lets the VM run on)\n");
    l
}

/// The SIGSYS handler: one line on stderr, the terminal back, exit. Only
/// async-signal-safe steps (a thread-local read, a stack buffer, write, tcsetattr,
/// _exit), each a call every thread's list allows.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; SigsysInfo
    // mirrors its layout for SIGSYS and is read only as far as the kernel's struct goes.
    let (code, nr) = unsafe {
        let s = &*(info as *const SigsysInfo);
        (s.code, i64::from(s.syscall))
    };
    let (name, len) = THREAD_NAME.with(Cell::get);
    // A SIGSYS from kill(2) is not a denied call: it ends passvm as any fatal signal
    // would (status 128 + N), saying so.
    let (line, status) = if code == SYS_SECCOMP {
        (report_line(&name[..len], nr), i32::from(EXIT_SECCOMP))
    } else {
        let mut l = Line {
            buf: [0; 256],
            len: 0,
        };
        l.push(b"passvm: stopped by a SIGSYS that no seccomp filter sent (si_code ");
        l.push_number(i64::from(code));
        l.push(b")\n");
        (l, 128 + libc::SIGSYS)
    };
    // SAFETY: writing an initialised stack buffer to stderr; the result does not matter
    // (there is nowhere else to report to).
    unsafe { libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len) };
    crate::terminal::restore_from_signal_handler();
    // SAFETY: _exit ends the process at once, without running anything that could
    // take a lock another thread holds.
    unsafe { libc::_exit(status) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set in a child of the test binary that runs one test which makes a denied call.
    const CHILD_ENV: &str = "PASSVM_SECCOMP_TEST_CHILD";

    #[test]
    fn every_kind_compiles_in_every_mode() {
        for mode in [SeccompMode::On, SeccompMode::Log] {
            let f = Filters::new(mode).unwrap();
            for kind in ThreadKind::ALL {
                let p = f.thread(kind).program.expect("a program");
                assert!(p.len() > 10, "{kind}: {} instructions", p.len());
            }
        }
        let off = Filters::new(SeccompMode::Off).unwrap();
        assert!(ThreadKind::ALL
            .iter()
            .all(|k| off.thread(*k).program.is_none()));
        off.thread(ThreadKind::Vcpu)
            .apply()
            .expect("off installs nothing");
    }

    #[test]
    fn modes_map_to_the_kernel_actions() {
        let ret = |p: &BpfProgram| -> Vec<u32> {
            // BPF_RET | BPF_K: the actions a program can return.
            p.iter().filter(|i| i.code == 0x06).map(|i| i.k).collect()
        };
        let on = SeccompAction::Trap;
        let on_prog = ThreadKind::Vcpu.compile(SeccompMode::On).unwrap().unwrap();
        let log_prog = ThreadKind::Vcpu.compile(SeccompMode::Log).unwrap().unwrap();
        let (on_rets, log_rets) = (ret(&on_prog), ret(&log_prog));
        assert!(on_rets.contains(&u32::from(on)), "{on_rets:x?}");
        assert!(on_rets.contains(&libc::SECCOMP_RET_ALLOW));
        assert!(!on_rets.contains(&libc::SECCOMP_RET_LOG));
        assert!(log_rets.contains(&libc::SECCOMP_RET_LOG), "{log_rets:x?}");
        assert!(!log_rets.contains(&libc::SECCOMP_RET_TRAP));
        assert_eq!("on".parse(), Ok(SeccompMode::On));
        assert_eq!("log".parse(), Ok(SeccompMode::Log));
        assert_eq!("off".parse(), Ok(SeccompMode::Off));
        assert!("yes".parse::<SeccompMode>().unwrap_err().contains("on"));
        assert_eq!(SeccompMode::default(), SeccompMode::On);
        assert_eq!(SeccompMode::Log.to_string(), "log");
    }

    #[test]
    fn the_lists_name_known_calls_without_duplicates() {
        assert!(syscall_names::len() > 350);
        for kind in ThreadKind::ALL {
            let calls = kind.syscalls();
            for (name, nr) in &calls {
                assert_eq!(
                    syscall_names::name(*nr),
                    Some(*name),
                    "{kind}: {name} = {nr}"
                );
            }
            let mut nrs: Vec<i64> = calls.iter().map(|c| c.1).collect();
            nrs.sort_unstable();
            nrs.dedup();
            assert_eq!(nrs.len(), calls.len(), "{kind} lists a call twice");
            for denied in ["socket", "connect", "execve", "fork", "open_by_handle_at"] {
                assert!(
                    !calls.iter().any(|(n, _)| *n == denied),
                    "{kind} allows {denied}"
                );
            }
        }
        assert_eq!(syscall_names::name(41), Some("socket"));
        assert_eq!(syscall_names::name(100_000), None);
        let line = report_line(b"vcpu0", 41);
        assert_eq!(
            std::str::from_utf8(&line.buf[..line.len]).unwrap(),
            "passvm: seccomp: thread vcpu0 made the denied syscall socket (41); a passvm \
             bug: please report it (--seccomp log lets the VM run on)\n"
        );
        let line = report_line(b"", 999);
        assert!(std::str::from_utf8(&line.buf[..line.len])
            .unwrap()
            .contains("thread ? made the denied syscall unknown (999)"));
    }

    /// Runs `test` of this binary in a child process with [`CHILD_ENV`] set to `mode`.
    fn run_child(test: &str, mode: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .output()
            .unwrap()
    }

    /// The child's side: installs the vCPU filter on its thread and calls socket(2),
    /// which no list allows. With the filter on, it never returns from that call.
    #[test]
    fn child_makes_a_denied_call() {
        let Some(mode) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        if mode == "kill" {
            // A SIGSYS someone sent, not a filter's: no filter installed at all.
            let _filters = Filters::new(SeccompMode::On).unwrap();
            // SAFETY: raising a signal whose handler is installed.
            unsafe { libc::raise(libc::SIGSYS) };
            println!("CHILD-SURVIVED the SIGSYS");
            return;
        }
        let mode: SeccompMode = mode.to_str().unwrap().parse().unwrap();
        let filters = Filters::new(mode).unwrap();
        std::thread::Builder::new()
            .name("vcpu7".into())
            .spawn(move || {
                filters.thread(ThreadKind::Vcpu).apply().unwrap();
                // SAFETY: socket(2) with constant arguments; the fd is closed if made.
                let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                if fd >= 0 {
                    // SAFETY: `fd` was just returned by socket.
                    unsafe { libc::close(fd) };
                }
                println!("CHILD-SURVIVED fd={fd}");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_denied_call_is_reported_by_name_and_ends_the_process() {
        let out = run_child("seccomp::tests::child_makes_a_denied_call", "on");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(EXIT_SECCOMP)),
            "stderr: {err}"
        );
        assert!(
            err.contains("passvm: seccomp: thread vcpu7 made the denied syscall socket (41)"),
            "{err}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("CHILD-SURVIVED"));
    }

    #[test]
    fn a_sigsys_from_kill_is_not_reported_as_a_denied_call() {
        let out = run_child("seccomp::tests::child_makes_a_denied_call", "kill");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + libc::SIGSYS), "stderr: {err}");
        assert!(
            err.contains("passvm: stopped by a SIGSYS that no seccomp filter sent"),
            "{err}"
        );
    }

    #[test]
    fn log_mode_lets_the_call_through() {
        let out = run_child("seccomp::tests::child_makes_a_denied_call", "log");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("CHILD-SURVIVED fd="), "{stdout}");
        assert!(!stdout.contains("fd=-1"), "socket(2) worked: {stdout}");
    }
}
