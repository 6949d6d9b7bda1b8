//! The guest console on COM1: where its output goes, how host input reaches it, and the
//! guest-panic detector.
//!
//! **Panic detection.** A guest booted with `panic=N` (N ≠ 0) reboots after a panic, so its
//! exit looks like an ordinary reboot. passvm watches the console output instead: a line
//! with `Kernel panic - not syncing: MSG` marks the run as a panic (a reboot or triple fault
//! that follows is reported as that panic), and the closing `---[ end Kernel panic` line
//! stops the VM at once, so `panic=0` guests (which would spin forever) end too. This needs
//! the serial port (`--serial off` disables detection). The pvpanic device would be an
//! alternative, but it is discovered through ACPI and needs `CONFIG_PVPANIC` in the guest;
//! the console works with any Linux guest that logs to ttyS0.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::legacy::Serial;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::exit::{ExitReason, VmExit};

const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing: ";
const PANIC_END: &[u8] = b"---[ end Kernel panic";
/// Longest line remembered for matching; the banners sit at the start of their lines.
const MAX_LINE: usize = 1024;

/// Guest output on its way to the user, watched for the kernel's panic banners.
pub struct ConsoleOutput {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    exit: Arc<VmExit>,
}

impl ConsoleOutput {
    /// Wraps `out`; panics found in the stream are reported to `exit`.
    pub fn new(out: Box<dyn Write + Send>, exit: Arc<VmExit>) -> Self {
        Self {
            out,
            line: Vec::with_capacity(128),
            exit,
        }
    }

    fn end_of_line(&mut self) {
        let line = &self.line;
        // The closing line repeats the banner, so it is checked first.
        if find(line, PANIC_END).is_some() {
            self.exit.request(ExitReason::GuestPanic(String::new()));
        } else if let Some(pos) = find(line, PANIC_BANNER) {
            let msg = String::from_utf8_lossy(&line[pos + PANIC_BANNER.len()..]);
            self.exit.note_panic(msg.trim_end().to_string());
        }
        self.line.clear();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            match b {
                b'\n' => self.end_of_line(),
                b'\r' => {}
                _ if self.line.len() < MAX_LINE => self.line.push(b),
                _ => {}
            }
        }
        // The watcher sees every byte even when the user's side is gone (a closed pipe).
        match self.out.write_all(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(buf.len()),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

const STDIN: i32 = libc::STDIN_FILENO;
const EV_STDIN: u32 = 0;
const EV_SPACE: u32 = 1;

/// Feeds stdin to the guest's UART, holding back what does not fit in its FIFO until the
/// guest drains it (then stdin is not polled, so a paste never spins or gets dropped). On
/// end of file stdin is dropped from the loop; the guest keeps running.
pub struct ConsoleInput {
    serial: Arc<Mutex<Serial>>,
    pending: VecDeque<u8>,
    stdin_watched: bool,
    /// stdin hit end of file or an error: never watched again.
    stdin_done: bool,
    stdin: RawFd,
}

impl ConsoleInput {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>) -> Self {
        Self {
            serial,
            pending: VecDeque::new(),
            stdin_watched: false,
            stdin_done: false,
            stdin: STDIN,
        }
    }

    fn feed(&mut self) {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let n = serial.enqueue_input(front);
            if n == 0 {
                break;
            }
            self.pending.drain(..n);
        }
    }

    fn set_stdin_watch(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.stdin_watched || (on && self.stdin_done) {
            return;
        }
        let ev = Events::with_data_raw(self.stdin, EV_STDIN, EventSet::IN);
        let res = if on { ops.add(ev) } else { ops.remove(ev) };
        match res {
            Ok(()) => self.stdin_watched = on,
            // epoll refuses regular files and /dev/null: then there is simply no input.
            Err(e) => {
                log::debug!("console: stdin not watched: {e:?}");
                self.stdin_done |= on;
            }
        }
    }

    /// End of input: the guest keeps running without it (a pipe's EOF must not spin).
    fn stop_stdin(&mut self, ops: &mut EventOps) {
        self.set_stdin_watch(ops, false);
        self.stdin_done = true;
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a local buffer of the given size from fd 0.
        let n = unsafe { libc::read(self.stdin, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => self.stop_stdin(ops),
            n if n > 0 => self.pending.extend(&buf[..n as usize]),
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    log::warn!("console: reading stdin: {e}; guest input stops");
                    self.stop_stdin(ops);
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        let space = self
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .input_space_evt()
            .as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(space, EV_SPACE, EventSet::IN)) {
            log::warn!("console: cannot watch the UART FIFO: {e:?}");
        }
        self.set_stdin_watch(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EV_STDIN => {
                if events.event_set().contains(EventSet::IN) {
                    self.read_stdin(ops);
                } else {
                    // Hang-up or error with nothing to read: the writer is gone.
                    self.stop_stdin(ops);
                }
            }
            _ => {
                let _ = self
                    .serial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .input_space_evt()
                    .read();
            }
        }
        self.feed();
        let full = !self.pending.is_empty();
        self.set_stdin_watch(ops, !full);
    }
}

/// Opens the host side of `--serial file=PATH`.
pub fn open_log(path: &std::path::Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// A reader-free helper for tests and tools: the bytes a `ConsoleOutput` passed through.
#[cfg(test)]
fn pass_through(input: &[u8], exit: Arc<VmExit>) -> Vec<u8> {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let mut c = ConsoleOutput::new(Box::new(buf.clone()), exit);
    for chunk in input.chunks(3) {
        c.write_all(chunk).unwrap();
    }
    let out = buf.0.lock().unwrap().clone();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_output_passes_untouched() {
        let exit = Arc::new(VmExit::new().unwrap());
        let text = b"[    0.1] Linux version 6.12\r\nKernel panic is a phrase\r\n";
        assert_eq!(pass_through(text, exit.clone()), text);
        assert!(!exit.is_stopping());
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn panic_banner_turns_the_following_reboot_into_a_panic() {
        let exit = Arc::new(VmExit::new().unwrap());
        pass_through(
            b"[ 1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009\r\n[ 1.3] Rebooting in 1 seconds..",
            exit.clone(),
        );
        assert!(
            !exit.is_stopping(),
            "the guest finishes printing and reboots by itself"
        );
        exit.request(ExitReason::GuestReboot);
        assert_eq!(
            exit.reason(),
            Some(ExitReason::GuestPanic(
                "Attempted to kill init! exitcode=0x00000009".into()
            ))
        );
        assert_eq!(exit.reason().unwrap().code(), 4);
    }

    #[test]
    fn end_of_panic_stops_the_vm() {
        let exit = Arc::new(VmExit::new().unwrap());
        pass_through(
            b"Kernel panic - not syncing: sysrq triggered crash\n---[ end Kernel panic - not syncing: sysrq triggered crash ]---\n",
            exit.clone(),
        );
        assert!(exit.is_stopping());
        assert_eq!(
            exit.reason(),
            Some(ExitReason::GuestPanic("sysrq triggered crash".into()))
        );
    }

    /// A pipe as stdin: its bytes reach the guest, and its end of file neither stops the VM
    /// nor keeps the event loop busy.
    #[test]
    fn piped_input_then_eof_does_not_spin() {
        use event_manager::{EventManager, SubscriberOps};
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors this test owns.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) },
            0
        );
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(Serial::new(irq, Box::new(io::sink())).unwrap()));
        let mut input = ConsoleInput::new(serial.clone());
        input.stdin = fds[0];
        let mut em = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
        em.add_subscriber(Box::new(input));
        // SAFETY: writing a local buffer to the pipe, then closing our write end.
        unsafe {
            assert_eq!(libc::write(fds[1], b"ls\r".as_ptr().cast(), 3), 3);
            libc::close(fds[1]);
        }
        let mut handled = 0;
        for _ in 0..5 {
            handled += em.run_with_timeout(50).unwrap();
        }
        assert!(
            handled <= 2,
            "EOF must not wake the loop again and again ({handled})"
        );
        let mut got = Vec::new();
        let mut s = serial.lock().unwrap();
        for _ in 0..3 {
            let mut b = [0u8];
            devices::bus::BusDevice::read(&mut *s, 0x3f8, 0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"ls\r");
        // SAFETY: closing the read end this test opened.
        unsafe { libc::close(fds[0]) };
    }

    #[test]
    fn stdin_bytes_reach_the_uart_in_order_across_a_full_fifo() {
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(Serial::new(irq, Box::new(io::sink())).unwrap()));
        let mut input = ConsoleInput::new(serial.clone());
        input.pending.extend((0..200u8).collect::<Vec<_>>());
        input.feed();
        let queued = 200 - input.pending.len();
        assert!(
            queued > 0 && !input.pending.is_empty(),
            "FIFO smaller than the paste"
        );
        let mut got = Vec::new();
        while got.len() < 200 {
            let mut s = serial.lock().unwrap();
            let mut lsr = [0u8];
            devices::bus::BusDevice::read(&mut *s, 0x3f8, 5, &mut lsr);
            if lsr[0] & 1 == 0 {
                drop(s);
                input.feed();
                continue;
            }
            let mut b = [0u8];
            devices::bus::BusDevice::read(&mut *s, 0x3f8, 0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, (0..200u8).collect::<Vec<_>>());
    }
}
