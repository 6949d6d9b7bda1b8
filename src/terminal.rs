//! Raw mode for the controlling terminal while the guest owns the console.
//!
//! In raw mode every key, Ctrl-C included, goes to the guest, as on a real serial line;
//! stop passvm from another terminal (SIGTERM) or from the guest. The original settings
//! are restored when the [`RawMode`] guard drops (every normal and signal-driven exit path
//! returns through it, because SIGINT/SIGTERM arrive on a signalfd rather than killing the
//! process) and from a panic hook (the release profile aborts on panic, so no destructor
//! runs there).

use std::io;
use std::sync::{Mutex, OnceLock};

/// The settings to put back, shared with the panic hook.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
/// The same settings for a signal handler, which may not take a lock: set once, before
/// raw mode goes on, and never changed.
static SAVED_FOR_SIGNALS: OnceLock<libc::termios> = OnceLock::new();

/// While alive, stdin is in raw mode.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Puts stdin in raw mode if it is a terminal; `Ok(None)` when it is not (a pipe, a file).
    pub fn enable_on_stdin() -> io::Result<Option<Self>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it and its result is checked.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and a valid pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = original;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(original);
        // A second raw mode in one process saves the same original settings.
        let _ = SAVED_FOR_SIGNALS.set(original);
        // SAFETY: valid fd and a fully initialised termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            let err = io::Error::last_os_error();
            restore();
            return Err(err);
        }
        install_panic_hook();
        Ok(Some(Self(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the saved settings back, once; safe to call from any path.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: valid fd and the termios read from it earlier.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

/// Puts the settings from before raw mode back, from a signal handler (the SIGSYS report
/// of `seccomp.rs`): no lock, only `tcsetattr`, which is async-signal-safe. Harmless
/// when raw mode already ended or never began.
pub fn restore_from_signal_handler() {
    if let Some(t) = SAVED_FOR_SIGNALS.get() {
        // SAFETY: valid fd and the termios read from it before raw mode went on.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_terminal_means_no_raw_mode() {
        // Under `cargo test` stdin is not the terminal in CI; when it is, check the restore.
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
        let guard = RawMode::enable_on_stdin().unwrap();
        assert_eq!(guard.is_some(), tty);
        drop(guard);
        assert!(
            SAVED.lock().unwrap().is_none(),
            "settings restored and forgotten"
        );
    }
}
