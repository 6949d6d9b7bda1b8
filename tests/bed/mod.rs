//! The nested test bed, driven from integration tests.
//!
//! A [`Scenario`] boots L0 (QEMU, TCG) → L1 (a Linux with VFIO, iommufd and nested
//! KVM) and runs one script from `resources/scenarios/` there; the script binds devices
//! and runs passvm, which boots L2. [`Scenario::run`] returns an [`Outcome`]: QEMU's
//! exit status, the whole serial log, the markers the scripts reported and the disk
//! images for inspection. See `docs/test-bed.md` for the console protocol and for
//! how to add a scenario.
//!
//! ```ignore
//! mod bed;
//! use bed::{Device, L1Kernel, Scenario};
//!
//! #[test]
//! #[ignore = "nested bed: run with `cargo test -- --ignored`"]
//! fn disk_reaches_l2() {
//!     let out = Scenario::new("vm-disk").l1(L1Kernel::Own).device(Device::blk("d0")).run();
//!     out.assert_ok();
//!     assert_eq!(out.l2_marker("disk"), Some("vda d0"));
//! }
//! ```
//!
//! Guarantees: the bed is prepared (kernel builds, images) once per test binary;
//! scenarios never overlap, across threads and test processes (one L0 takes both
//! cores); every scenario has a deadline after which its process group is killed;
//! no QEMU outlives its scenario, even when the test panics; and when a test fails
//! while an [`Outcome`] is alive, the tail of its log is printed.

// Each nested_*.rs test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub mod journal;

/// Where the launcher writes a disk's name ("PASSVM-DISK name=NAME\n").
pub const DISK_HEADER_OFFSET: u64 = 0;
/// Where L2's `disk` check writes "PASSVM-L2-WROTE name=NAME\n" (sector 2048).
pub const DISK_WRITE_OFFSET: u64 = 1 << 20;
/// Default deadline of a scenario; a normal one takes well under a minute.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(240);
/// A run whose console shows no progress for this long is stopped as hung. Every
/// scenario prints at least every few seconds (L2's checks and the benches report
/// as they go); the hang probe's own lines ([`is_probe_line`]) are not progress.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(90);
/// How many times a hung run ([`Stopped::Silent`], [`Stopped::Lockup`]) or one whose
/// guest died at the CPU level ([`Outcome::cpu_crash`]) is retried;
/// `PASSVM_BED_RETRIES` overrides it. A run that failed in any other way is never
/// retried.
pub const DEFAULT_RETRIES: usize = 3;
/// How many times one attempt is run again because L0's QEMU crashed
/// ([`Outcome::l0_crash`]); not counted against the scenario's retries.
pub const L0_CRASH_RETRIES: usize = 2;
/// After a kernel (L1's or L2's) reports a lockup, the run goes on this long so
/// that the backtraces and passvm's hang probe reach the log, then it is stopped.
const LOCKUP_GRACE: Duration = Duration::from_secs(40);

/// Console lines by which a Linux kernel says a CPU is stuck: the RCU stall
/// detector (normal and expedited) and the soft- and hard-lockup watchdogs.
const LOCKUP_SIGNS: &[&str] = &[
    "detected stalls on CPUs/tasks",
    "detected expedited stalls",
    "BUG: soft lockup",
    "Watchdog detected hard LOCKUP",
];

/// Whether a console line comes from L1's hang probe (`bed_hang_probe`: thread
/// states, and passvm's vCPU reports it asks for), which speaks while nothing moves.
pub fn is_probe_line(line: &str) -> bool {
    line.starts_with("L1| HANG ")
        || (line.starts_with("VMM| ")
            && (line.contains("passvm::vcpu] vcpu") || line.contains("SIGUSR1")))
}

/// Whether a console line is a kernel's lockup report.
pub fn is_lockup_report(line: &str) -> bool {
    LOCKUP_SIGNS.iter().any(|sign| line.contains(sign))
}

/// Whether an L2 console line reports a kernel dying of a fault in its own exception
/// path (a double fault, or the recursion hitting the stack guard page). A guest
/// kernel only does that when its CPU state was broken under it; L2's other oopses
/// can be its own doing (a driver's bug) and stay failures.
pub fn exception_stack_recursion(line: &str) -> bool {
    line.contains("Oops: double fault")
        || line.contains("stack recursion on stack type")
        || line.contains("BUG: TASK stack guard page was hit")
}

/// Why the bed stopped a run that had not ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The run's deadline passed.
    Deadline(Duration),
    /// Nothing but the hang probe reached the console for this long.
    Silent(Duration),
    /// A kernel reported a lockup (the line), and the run was stopped after
    /// the grace period.
    Lockup(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Deadline(d) => write!(f, "killed at its {} s deadline", d.as_secs()),
            Stopped::Silent(d) => {
                write!(
                    f,
                    "killed after {} s without progress on the console",
                    d.as_secs()
                )
            }
            Stopped::Lockup(line) => write!(f, "killed after a kernel reported a lockup: {line}"),
        }
    }
}

/// Which kernel L1 runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L1Kernel {
    /// The bed's own kernel: iommufd, VFIO device cdevs, groups, mtty, all built in.
    Own,
    /// Debian's packaged 6.12 with its modules: VFIO groups only (no iommufd).
    Debian,
    /// The bed's own kernel, its image with QEMU and Cloud Hypervisor beside passvm
    /// (`bed.sh bench --peers` builds it and names it in `PASSVM_BED_PEERS_INITRD`).
    Peers,
}

impl L1Kernel {
    fn as_arg(self) -> &'static str {
        match self {
            L1Kernel::Own => "own",
            L1Kernel::Debian => "debian",
            L1Kernel::Peers => "peers",
        }
    }
}

/// A device L0 gives L1. Names are how a scenario script finds it (`bed_bdf NAME`)
/// and, for disks, the image file name (`NAME.img`) and its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// virtio-blk on the root bus (`0000:00:xx.0`): its own IOMMU group, no reset method.
    Blk(String),
    /// virtio-blk on the root bus with an expansion ROM: a 6 KiB option ROM image L0
    /// writes to `NAME.rom` in the run's directory.
    BlkRom(String),
    /// virtio-blk behind a PCIe root port (`0000:0N:00.0`): its own group, FLR/PM/bus reset.
    BlkRootPort(String),
    /// [`Device::BlkRootPort`] with an AER capability: L1's AER driver reports its
    /// errors (real or injected through L1's aer_inject) to vfio-pci.
    BlkAer(String),
    /// Two virtio-blk functions of one multifunction slot: one IOMMU group of two devices.
    BlkMultifunction(String, String),
    /// [`Device::BlkMultifunction`] behind a PCIe root port (`0000:0N:00.0` and `.1`),
    /// without FLR or PM: only a bus reset resets them, both at once.
    BlkMultifunctionRootPort(String, String),
    /// An e1000e NIC on QEMU's user network (10.0.2.2 answers ping).
    E1000e(String),
    /// QEMU's `edu` teaching device.
    Edu(String),
    /// An NVMe controller with disk `NAME`: the MSI-X table and PBA share BAR 0 with
    /// the registers.
    Nvme(String),
    /// An ICH9 AHCI controller with SATA disk `NAME`: MSI without MSI-X, an I/O BAR.
    Ahci(String),
    /// A PCI 16550 UART: one I/O BAR, INTx only. What L2 sends is in
    /// [`Outcome::file`]`("NAME.out")`.
    Serial(String),
    /// ivshmem-plain with an 8 GiB 64-bit BAR 2 backed by `NAME.shm` in the run's
    /// directory ([`Outcome::file`]).
    Ivshmem(String),
    /// An igb SR-IOV physical function behind a root port, on QEMU's user network;
    /// L1 creates its virtual functions. Every frame is in `NAME.pcap`.
    Igb(String),
}

impl Device {
    /// Shorthand for [`Device::Blk`].
    pub fn blk(name: &str) -> Self {
        Device::Blk(name.to_owned())
    }

    /// Shorthand for [`Device::BlkRootPort`].
    pub fn blk_root_port(name: &str) -> Self {
        Device::BlkRootPort(name.to_owned())
    }

    /// Shorthand for [`Device::BlkMultifunction`].
    pub fn blk_multifunction(a: &str, b: &str) -> Self {
        Device::BlkMultifunction(a.to_owned(), b.to_owned())
    }

    /// Shorthand for [`Device::E1000e`].
    pub fn e1000e(name: &str) -> Self {
        Device::E1000e(name.to_owned())
    }

    fn spec(&self) -> String {
        match self {
            Device::Blk(n) => format!("blk:{n}"),
            Device::BlkRom(n) => format!("blk-rom:{n}"),
            Device::BlkRootPort(n) => format!("blk-rp:{n}"),
            Device::BlkAer(n) => format!("blk-aer:{n}"),
            Device::BlkMultifunction(a, b) => format!("blk-mf:{a}+{b}"),
            Device::BlkMultifunctionRootPort(a, b) => format!("blk-mf-rp:{a}+{b}"),
            Device::E1000e(n) => format!("e1000e:{n}"),
            Device::Edu(n) => format!("edu:{n}"),
            Device::Nvme(n) => format!("nvme:{n}"),
            Device::Ahci(n) => format!("ahci:{n}"),
            Device::Serial(n) => format!("serial:{n}"),
            Device::Ivshmem(n) => format!("ivshmem:{n}"),
            Device::Igb(n) => format!("igb:{n}"),
        }
    }

    fn disks(&self) -> Vec<&str> {
        match self {
            Device::Blk(n)
            | Device::BlkRom(n)
            | Device::BlkRootPort(n)
            | Device::BlkAer(n)
            | Device::Nvme(n)
            | Device::Ahci(n) => {
                vec![n.as_str()]
            }
            Device::BlkMultifunction(a, b) | Device::BlkMultifunctionRootPort(a, b) => {
                vec![a.as_str(), b.as_str()]
            }
            Device::E1000e(_)
            | Device::Edu(_)
            | Device::Serial(_)
            | Device::Ivshmem(_)
            | Device::Igb(_) => vec![],
        }
    }

    /// Large files the launcher makes for this device besides disk images (removed
    /// after a passing run, like the images).
    fn scratch(&self) -> Option<String> {
        match self {
            Device::Ivshmem(n) => Some(format!("{n}.shm")),
            _ => None,
        }
    }
}

/// One run of a scenario script (`resources/scenarios/NAME.sh`) in L1.
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    l1: L1Kernel,
    devices: Vec<Device>,
    timeout: Duration,
    l1_append: Vec<String>,
    memory_mib: u32,
    silence_limit: Duration,
    retries: Option<usize>,
}

impl Scenario {
    /// A scenario running `resources/scenarios/NAME.sh` on the bed's own L1 kernel,
    /// with no devices and the default deadline.
    pub fn new(name: &str) -> Self {
        Scenario {
            name: name.to_owned(),
            l1: L1Kernel::Own,
            devices: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            l1_append: Vec::new(),
            memory_mib: 3072,
            silence_limit: SILENCE_LIMIT,
            retries: None,
        }
    }

    /// The L1 kernel.
    pub fn l1(mut self, kernel: L1Kernel) -> Self {
        self.l1 = kernel;
        self
    }

    /// Adds a virtio-blk disk on the root bus ([`Device::Blk`]).
    pub fn disk(self, name: &str) -> Self {
        self.device(Device::blk(name))
    }

    /// Adds a device; L0 attaches them in this order.
    pub fn device(mut self, device: Device) -> Self {
        self.devices.push(device);
        self
    }

    /// The deadline for the whole run (L0 start to L0 exit). QEMU is killed after it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Extra L1 kernel arguments (e.g. `loglevel=7` while debugging).
    pub fn l1_append(mut self, args: &str) -> Self {
        self.l1_append.push(args.to_owned());
        self
    }

    /// How long the console may show no progress before the run counts as hung
    /// (default [`SILENCE_LIMIT`]).
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.silence_limit = limit;
        self
    }

    /// How many times a hung run is retried (default `PASSVM_BED_RETRIES`, else
    /// [`DEFAULT_RETRIES`]).
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = Some(retries);
        self
    }

    /// L1's RAM in MiB (default 3072).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Prepares the bed if this test binary has not yet, waits for the bed to be free,
    /// runs the scenario to its end or its deadline and returns what happened.
    ///
    /// Panics only when the bed itself cannot be set up or started (a test of the
    /// scenario's outcome is the caller's job: see [`Outcome::assert_ok`]).
    pub fn run(self) -> Outcome {
        let retries = self.retries.unwrap_or_else(|| {
            std::env::var("PASSVM_BED_RETRIES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_RETRIES)
        });
        let mut hung = Vec::new();
        let mut l0_crashes = 0;
        loop {
            let mut outcome = self.run_once();
            // L0 itself crashing is QEMU's fault, whatever the scenario: run the same
            // attempt again without spending one of the scenario's retries.
            if let Some(why) = outcome.l0_crash() {
                if l0_crashes < L0_CRASH_RETRIES {
                    l0_crashes += 1;
                    announce(&format!(
                        "[bed] scenario {}: L0's QEMU crashed ({why}); its log stays in {}. \
                         Running it again: QEMU faulted, not passvm (docs/test-bed.md, \
                         \"L0 crashes\").",
                        self.name,
                        outcome.log_path.display()
                    ));
                    hung.push(format!("{}: L0 crashed: {why}", outcome.log_path.display()));
                    continue;
                }
            }
            // Only a failed run is retried (a scenario may provoke a crash on purpose).
            let retry = !outcome.succeeded() && (outcome.hung() || outcome.cpu_crash().is_some());
            if !retry || hung.len() - l0_crashes >= retries {
                self.journal(&outcome, &hung);
                if !hung.is_empty() {
                    announce(&format!(
                        "[bed] scenario {} ran {} times: {} hung or crashed before this one",
                        self.name,
                        hung.len() + 1,
                        hung.len()
                    ));
                }
                outcome.hung_attempts = hung;
                return outcome;
            }
            let mut why = match outcome.cpu_crash() {
                Some(line) if outcome.stopped.is_none() => format!("a CPU-level crash: {line}"),
                _ => outcome.summary(),
            };
            if let Some(frozen) = journal::frozen_clock(&outcome.log) {
                why.push_str(&format!("; {frozen}"));
            }
            announce(&format!(
                "[bed] scenario {} hung or crashed ({why}); its log stays in {}. Running it \
                 again: the nested emulation breaks a run now and then by itself \
                 (docs/test-bed.md, \"Known hangs\"); a failure that repeats fails the test.",
                self.name,
                outcome.log_path.display()
            ));
            hung.push(format!("{}: {why}", outcome.log_path.display()));
        }
    }

    /// Writes the finished run to the journal ([`journal`]) and, for a clean pass,
    /// to the history its later runs are compared with.
    fn journal(&self, outcome: &Outcome, retried: &[String]) {
        let test = thread::current()
            .name()
            .filter(|n| *n != "main")
            .map_or_else(|| self.name.clone(), str::to_owned);
        let end = if outcome.succeeded() {
            journal::End::Pass
        } else if outcome.hung() {
            journal::End::Hung(outcome.summary())
        } else if let Some(why) = outcome.l0_crash() {
            journal::End::Crash(format!("L0 crashed: {why}"))
        } else if let Some(line) = outcome.cpu_crash() {
            journal::End::Crash(line.to_owned())
        } else {
            journal::End::Fail(outcome.summary())
        };
        let slow = (end == journal::End::Pass)
            .then(|| {
                journal::slow_sign(&outcome.log)
                    .map(str::to_owned)
                    .or_else(|| journal::frozen_clock(&outcome.log))
                    .or_else(|| journal::slow_against(outcome.elapsed, &journal::history(&test)))
            })
            .flatten();
        if let Some(why) = &slow {
            announce(&format!(
                "[bed] {test} passed slowly ({why}); log: {}",
                outcome.log_path.display()
            ));
        }
        if end == journal::End::Pass && slow.is_none() && retried.is_empty() {
            journal::remember(&test, outcome.elapsed);
        }
        journal::write(&journal::Entry {
            test,
            scenario: self.name.clone(),
            end,
            attempts: retried.len() + 1,
            elapsed: outcome.elapsed,
            slow,
            retried: retried.to_vec(),
        });
    }

    /// One run: the bed lock, L0 until it exits or is stopped, the outcome.
    fn run_once(&self) -> Outcome {
        prepare();
        let workdir = new_workdir(&self.name);
        let _bed = BedLock::acquire();
        let log_path = workdir.join("serial.log");
        let mut log_file = File::create(&log_path).expect("create the serial log");

        let mut cmd = Command::new("bash");
        // stderr into the same pipe keeps the launcher's and QEMU's messages in
        // order with the console.
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 2>&1"#)
            .arg(resources().join("bed.sh"))
            .arg("launch")
            .args(["--scenario", &self.name])
            .args(["--l1", self.l1.as_arg()])
            .arg("--workdir")
            .arg(&workdir)
            // The deadline is ours: the launcher `exec`s QEMU directly.
            .args(["--timeout", "0"])
            .args(["--memory", &self.memory_mib.to_string()]);
        for d in &self.devices {
            cmd.args(["--device", &d.spec()]);
        }
        if !self.l1_append.is_empty() {
            cmd.args(["--append", &self.l1_append.join(" ")]);
        }
        // We hold the bed lock already (and our deadline must not count waiting).
        cmd.env("PASSVM_BED_LOCKED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so the deadline and Drop can kill QEMU and
            // everything else the launcher started with one signal.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl(2), which is async-signal-safe and touches no memory of ours.
        unsafe {
            // If this test process dies without unwinding (SIGKILL, a harness
            // timeout), the kernel kills the launcher, which by then is QEMU itself
            // (bash and the launcher `exec`; PDEATHSIG survives exec).
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }

        let start = Instant::now();
        let mut group = ProcessGroup {
            leader: cmd.spawn().expect("start resources/bed.sh launch"),
            reaped: false,
        };
        let stdout = group.leader.stdout.take().expect("piped stdout");
        let console = Arc::new(Mutex::new(Console {
            log: String::new(),
            last_output: start,
            lockup: None,
        }));
        let reader = {
            let console = Arc::clone(&console);
            let echo = std::env::var_os("PASSVM_BED_VERBOSE").is_some();
            thread::spawn(move || {
                let mut lines = BufReader::new(stdout);
                let mut buf = Vec::new();
                while matches!(lines.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf);
                    let _ = log_file.write_all(line.as_bytes());
                    if echo {
                        eprint!("{line}");
                    }
                    let mut c = console.lock().unwrap();
                    if !is_probe_line(&line) {
                        c.last_output = Instant::now();
                    }
                    if c.lockup.is_none() && is_lockup_report(&line) {
                        c.lockup = Some((Instant::now(), line.trim_end().to_owned()));
                    }
                    c.log.push_str(&line);
                    buf.clear();
                }
            })
        };

        let mut stopped = None;
        let status = loop {
            if let Some(status) = group.leader.try_wait().expect("wait for the launcher") {
                break status;
            }
            stopped = self.should_stop(start, &console.lock().unwrap());
            if stopped.is_some() {
                group.kill();
                break group.leader.wait().expect("wait for the killed launcher");
            }
            thread::sleep(Duration::from_millis(100));
        };
        group.reaped = true;
        // The launcher `exec`ed QEMU, the only holder of the pipe: it is closed now.
        let _ = reader.join();
        let elapsed = start.elapsed();

        let mut log = std::mem::take(&mut console.lock().unwrap().log);
        // Serial consoles end lines with CRLF.
        log.retain(|c| c != '\r');
        let disks = self
            .devices
            .iter()
            .flat_map(|d| d.disks())
            .map(|n| (n.to_owned(), workdir.join(format!("{n}.img"))))
            .collect();
        let scratch = self
            .devices
            .iter()
            .filter_map(Device::scratch)
            .map(|f| workdir.join(f))
            .collect();
        let outcome = Outcome {
            scenario: self.name.clone(),
            status: status.code(),
            signal: status.signal(),
            stopped,
            elapsed,
            timeout: self.timeout,
            log,
            log_path,
            workdir,
            disks,
            scratch,
            hung_attempts: Vec::new(),
        };
        eprintln!(
            "[bed] scenario {} finished in {:.1} s: {}",
            outcome.scenario,
            elapsed.as_secs_f64(),
            outcome.summary()
        );
        outcome
    }
}

/// Prints a line on the test process's real stderr, past libtest's output capture
/// (which only takes `eprint!`): a retry must show in the log of a passing CI run too.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What the reader thread has seen of a running scenario's console.
struct Console {
    log: String,
    last_output: Instant,
    /// When the first lockup report came, and its line.
    lockup: Option<(Instant, String)>,
}

impl Scenario {
    /// Whether a run that started at `start` must be stopped now, and why: its
    /// deadline passed, its console fell silent, or a kernel reported a lockup
    /// (stopped once the grace period let the backtraces through).
    fn should_stop(&self, start: Instant, console: &Console) -> Option<Stopped> {
        if start.elapsed() > self.timeout {
            return Some(Stopped::Deadline(self.timeout));
        }
        if console.last_output.elapsed() > self.silence_limit {
            return Some(Stopped::Silent(self.silence_limit));
        }
        match &console.lockup {
            Some((at, line)) if at.elapsed() > LOCKUP_GRACE => Some(Stopped::Lockup(line.clone())),
            _ => None,
        }
    }
}

/// What a scenario run produced. When the test panics while this is alive, the tail
/// of the log is printed and the work directory (serial log, disk images) is kept.
#[derive(Debug)]
pub struct Outcome {
    /// The scenario's name.
    pub scenario: String,
    /// QEMU's exit status (0 after L1 powered off), `None` when it was killed by a
    /// signal (the bed stopping it).
    pub status: Option<i32>,
    /// The signal that ended the launcher, if any.
    pub signal: Option<i32>,
    /// Why the bed stopped the run, if it did not end by itself.
    pub stopped: Option<Stopped>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The deadline the run had.
    pub timeout: Duration,
    /// Everything L0 printed: L1's console (kernel, `L1| `, `L2| `, `VMM| ` lines),
    /// the launcher's `[bed]` lines and QEMU's messages; CR removed.
    pub log: String,
    /// The same log on disk (kept after the test).
    pub log_path: PathBuf,
    /// The run's directory: `serial.log` and the disk images.
    pub workdir: PathBuf,
    /// Disk name → raw image L0 used (L2's writes land here).
    pub disks: BTreeMap<String, PathBuf>,
    /// Other large files of the run's devices (ivshmem backing files).
    pub scratch: Vec<PathBuf>,
    /// Earlier runs of the same scenario that hung or crashed and were retried: log
    /// path and how each ended.
    pub hung_attempts: Vec<String>,
}

impl Outcome {
    /// Lines L1's userspace printed (init and scenario), without the `L1| ` prefix.
    pub fn l1_lines(&self) -> impl Iterator<Item = &str> {
        self.prefixed("L1| ")
    }

    /// Lines of L2's serial console (passvm's stdout), without the `L2| ` prefix.
    pub fn l2_lines(&self) -> impl Iterator<Item = &str> {
        self.prefixed("L2| ")
    }

    /// The line saying a CPU-level death, if there is one: passvm's report that the guest
    /// died (a triple fault, a KVM internal error), or L1's own kernel oopsing in an
    /// exception handler (its console lines carry no prefix; seen once, 2026-12-02: a
    /// page fault on `iret` whose handler faulted again on a zero per-CPU base until the
    /// stack guard page, in a vCPU thread, i.e. L1's kernel state broken after a world
    /// switch), or L2's kernel dying of the same recursion: a page fault on `iret` until
    /// a double fault on the exception stack (seen once, CI of 2026-12-03, in a boot
    /// with no device at 1.7 s, "stack recursion on stack type 5"). How the nested
    /// emulation's state corruption shows when it does not hang (docs/test-bed.md,
    /// "Known hangs"). No scenario expects one, so such a run is retried like a hung one.
    pub fn cpu_crash(&self) -> Option<&str> {
        self.vmm_lines()
            .find(|l| l.contains("guest triple-faulted") || l.contains("KVM internal error"))
            .or_else(|| self.l2_lines().find(|l| exception_stack_recursion(l)))
            .or_else(|| {
                self.log.lines().find(|l| {
                    !l.starts_with("L1| ")
                        && !l.starts_with("L2| ")
                        && !l.starts_with("VMM| ")
                        && (l.contains("BUG: TASK stack guard page was hit")
                            || l.contains("BUG: kernel NULL pointer dereference")
                            || l.contains("Oops: "))
                })
            })
    }

    /// How L0's QEMU crashed, if it did: killed by a fault signal (SIGSEGV, SIGABRT from
    /// a failed assertion, SIGBUS, SIGILL, SIGFPE) that the bed did not send, with
    /// QEMU's last message when it left one. Seen at boot, in SeaBIOS, before L1 or
    /// passvm ran (docs/test-bed.md, "L0 crashes").
    pub fn l0_crash(&self) -> Option<String> {
        const FAULTS: [(i32, &str); 5] = [
            (libc::SIGSEGV, "SIGSEGV"),
            (libc::SIGABRT, "SIGABRT"),
            (libc::SIGBUS, "SIGBUS"),
            (libc::SIGILL, "SIGILL"),
            (libc::SIGFPE, "SIGFPE"),
        ];
        if self.stopped.is_some() || self.status.is_some() {
            return None;
        }
        let (_, name) = FAULTS.iter().find(|(n, _)| Some(*n) == self.signal)?;
        let said = self
            .log
            .lines()
            .rev()
            .find_map(|l| l.find("qemu-system-x86_64: ").map(|i| &l[i..]));
        Some(match said {
            Some(msg) => format!("{name}: {msg}"),
            None => name.to_string(),
        })
    }

    /// Whether the bed stopped the run as hung: its console fell silent or a kernel
    /// reported a lockup (not its deadline).
    pub fn hung(&self) -> bool {
        matches!(self.stopped, Some(Stopped::Silent(_) | Stopped::Lockup(_)))
    }

    /// Lines passvm printed on stderr (its log and errors), without `VMM| `.
    pub fn vmm_lines(&self) -> impl Iterator<Item = &str> {
        self.prefixed("VMM| ")
    }

    fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.log.lines().filter_map(move |l| l.strip_prefix(prefix))
    }

    /// Every value of an L1 marker (`bed_report KEY VALUE` in a scenario), in order.
    pub fn markers(&self, key: &str) -> Vec<&str> {
        markers_in(self.l1_lines(), key)
    }

    /// The first value of an L1 marker.
    pub fn marker(&self, key: &str) -> Option<&str> {
        self.markers(key).into_iter().next()
    }

    /// Every value of an L2 marker (`bed_report KEY VALUE` in an L2 check).
    pub fn l2_markers(&self, key: &str) -> Vec<&str> {
        markers_in(self.l2_lines(), key)
    }

    /// The first value of an L2 marker.
    pub fn l2_marker(&self, key: &str) -> Option<&str> {
        self.l2_markers(key).into_iter().next()
    }

    /// The scenario script's exit status from L1's final
    /// `PASSVM-BED-RESULT scenario=NAME rc=N` line; `None` if L1 never got there.
    pub fn scenario_rc(&self) -> Option<i32> {
        self.result_rc("PASSVM-BED-RESULT ", self.log.lines())
    }

    /// The L2 check's exit status from `PASSVM-L2-RESULT check=NAME rc=N`; `None` if
    /// L2 never got there.
    pub fn l2_rc(&self) -> Option<i32> {
        self.result_rc("PASSVM-L2-RESULT ", self.l2_lines())
    }

    fn result_rc<'a>(&self, tag: &str, mut lines: impl Iterator<Item = &'a str>) -> Option<i32> {
        lines
            .find_map(|l| l.strip_prefix(tag))
            .and_then(|rest| rest.split_whitespace().find_map(|w| w.strip_prefix("rc=")))
            .and_then(|rc| rc.parse().ok())
    }

    /// The raw image of disk `name`.
    pub fn disk(&self, name: &str) -> &Path {
        self.disks
            .get(name)
            .unwrap_or_else(|| panic!("scenario {} has no disk named {name}", self.scenario))
    }

    /// `len` bytes of disk `name` at `offset`, as L0 sees them after the run.
    pub fn read_disk(&self, name: &str, offset: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(self.disk(name)).expect("open disk image");
        f.seek(SeekFrom::Start(offset)).expect("seek disk image");
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).expect("read disk image");
        buf
    }

    /// `len` bytes at `offset` of a file the launcher made in the run's directory for
    /// a device (`NAME.out`, `NAME.shm`, `NAME.pcap`), as L0 left it; shorter if the
    /// file is, empty if it does not exist.
    pub fn file(&self, name: &str, offset: u64, len: usize) -> Vec<u8> {
        let Ok(mut f) = File::open(self.workdir.join(name)) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.take(len as u64).read_to_end(&mut buf);
        }
        buf
    }

    /// Whether L2's `disk` check wrote its line to disk `name` (checked in L0's image).
    pub fn l2_wrote(&self, name: &str) -> bool {
        let want = format!("PASSVM-L2-WROTE name={name}\n");
        self.read_disk(name, DISK_WRITE_OFFSET, want.len()) == want.as_bytes()
    }

    /// QEMU exited by itself (L1 powered off) and the scenario script returned 0.
    pub fn succeeded(&self) -> bool {
        self.stopped.is_none() && self.status == Some(0) && self.scenario_rc() == Some(0)
    }

    /// One line saying how the run ended.
    pub fn summary(&self) -> String {
        if let Some(why) = &self.stopped {
            return why.to_string();
        }
        let l0 = match (self.status, self.signal) {
            (Some(0), _) => "QEMU exited".to_owned(),
            (Some(c), _) => format!("QEMU failed with status {c}"),
            (None, Some(s)) => format!("QEMU killed by signal {s}"),
            (None, None) => "QEMU ended without a status".to_owned(),
        };
        match self.scenario_rc() {
            Some(rc) => format!("{l0}, scenario rc={rc}"),
            None => format!("{l0}, L1 never reported a scenario result"),
        }
    }

    /// Panics (printing the log tail) unless [`Outcome::succeeded`].
    pub fn assert_ok(&self) {
        assert!(
            self.succeeded(),
            "scenario {} did not succeed: {}",
            self.scenario,
            self.summary()
        );
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "\n[bed] ---- scenario {} ({}{}): last lines of {} ----\n{}\n[bed] ---- end of log (full log and disks kept in {}) ----",
                self.scenario,
                self.summary(),
                if self.hung_attempts.is_empty() {
                    String::new()
                } else {
                    format!("; earlier attempts hung: {}", self.hung_attempts.join(", "))
                },
                self.log_path.display(),
                self.tail(60),
                self.workdir.display()
            );
        } else {
            // Keep the log of a passing run; its disk images are just weight.
            for img in self.disks.values().chain(&self.scratch) {
                let _ = fs::remove_file(img);
            }
        }
    }
}

fn markers_in<'a>(lines: impl Iterator<Item = &'a str>, key: &str) -> Vec<&'a str> {
    lines
        .filter_map(|l| l.strip_prefix("BED "))
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

/// The launcher's process group (the launcher `exec`s QEMU, so its leader ends up
/// being QEMU); killed on drop so a panicking test leaves no QEMU.
struct ProcessGroup {
    leader: Child,
    /// Once the leader is reaped its id may be reused: never signal it again.
    reaped: bool,
}

impl ProcessGroup {
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        let Ok(pgid) = i32::try_from(self.leader.id()) else {
            return;
        };
        // SAFETY: kill(2) takes no pointers. -pgid names the group process_group(0)
        // created at spawn; its leader is our child and not yet reaped, so the id
        // still belongs to that group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
        if !self.reaped {
            let _ = self.leader.wait();
        }
    }
}

/// Held while a scenario runs: an flock on `$TMPDIR/passvm-bed.lock`, so scenarios
/// of every thread, test process and checkout on this machine run one at a time (the
/// cores are what is shared, whatever cache a run uses).
struct BedLock(File);

impl BedLock {
    fn acquire() -> Self {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("passvm-bed.lock"))
            .expect("open the bed lock");
        let waited = Instant::now();
        loop {
            // SAFETY: flock(2) on a descriptor `file` owns; no memory is shared.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::Interrupted,
                "flock the bed lock: {err}"
            );
        }
        if waited.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "[bed] waited {:.0} s for the bed",
                waited.elapsed().as_secs_f64()
            );
        }
        BedLock(file)
    }
}

fn resources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("resources")
}

/// Runs `resources/bed.sh prepare` once per test binary (kernel, Debian kernel,
/// static passvm, images; cached, so cheap when nothing changed).
fn prepare() {
    static PREPARED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = PREPARED.get_or_init(|| {
        let start = Instant::now();
        let status = Command::new(resources().join("bed.sh"))
            .arg("prepare")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run resources/bed.sh: {e}"))?;
        if !status.success() {
            return Err(format!(
                "resources/bed.sh prepare failed ({status}): see its output above"
            ));
        }
        eprintln!("[bed] prepared in {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    });
    if let Err(e) = result {
        panic!("the nested bed is not ready: {e}");
    }
}

fn new_workdir(name: &str) -> PathBuf {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bed")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the scenario's work directory");
    dir
}
