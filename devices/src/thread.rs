//! Helper threads that take no signals.
//!
//! The VMM reads its signals (SIGTERM, SIGUSR1, SIGPWR...) from a signalfd and kicks vCPU
//! threads with a real-time signal; a helper thread that could receive one would take the
//! signal's default action (terminate) or swallow a kick meant for a vCPU. A thread
//! inherits its creator's signal mask at creation, so the mask is set around the spawn,
//! not by the new thread (which could be signalled before its first instruction).

use std::io;
use std::thread::JoinHandle;

/// Spawns `f` on a thread named `name` with every asynchronous signal blocked (faults
/// such as SIGSEGV, and SIGSYS, stay deliverable).
pub fn spawn_without_signals<F>(name: &str, f: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    // SAFETY: sigset_t is plain data, initialised by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut all) };
    // Faults stay deliverable: blocked, the kernel would still kill the process for one,
    // but without the handlers (Rust's stack-overflow report) running first. So does
    // SIGSYS, the trap of a seccomp filter: the VMM's handler names the denied call.
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
        libc::SIGSYS,
    ] {
        // SAFETY: `all` is a valid, initialised sigset_t.
        unsafe { libc::sigdelset(&mut all, sig) };
    }
    // SAFETY: as above, filled by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid; this changes only the calling thread's mask, restored
    // below on every path.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let spawned = std::thread::Builder::new().name(name.into()).spawn(f);
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    spawned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(sig: i32) -> bool {
        // SAFETY: plain data, filled by pthread_sigmask.
        let mut cur: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: reading the calling thread's mask into a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) };
        // SAFETY: `cur` is a valid set.
        unsafe { libc::sigismember(&cur, sig) == 1 }
    }

    #[test]
    fn the_helper_blocks_signals_and_the_caller_keeps_its_mask() {
        let before = blocked(libc::SIGUSR1);
        let t = spawn_without_signals("t", || {
            assert!(blocked(libc::SIGUSR1) && blocked(libc::SIGTERM));
            assert!(blocked(libc::SIGRTMIN()));
            assert!(!blocked(libc::SIGSEGV), "faults are not blocked");
            assert!(!blocked(libc::SIGSYS), "nor is a seccomp trap");
        })
        .unwrap();
        t.join().unwrap();
        assert_eq!(
            blocked(libc::SIGUSR1),
            before,
            "the caller's mask is restored"
        );
    }
}
