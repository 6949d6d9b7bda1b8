//! vCPU threads: one OS thread per vCPU runs `KVM_RUN` and dispatches its exits.
//!
//! * Port and MMIO exits go to the shared PIO/MMIO [`Bus`]es (read-locked per access; the
//!   write lock is only taken when a device moves a BAR).
//! * `KVM_EXIT_SHUTDOWN` is a triple fault; `KVM_EXIT_SYSTEM_EVENT` carries reset, power-off
//!   and crash requests; entry failures and internal errors end the VM with their reason.
//! * Stopping: [`VmExit::request`] sets the latch, then [`kick`] sends the kick signal to
//!   every vCPU thread. The handler sets `immediate_exit` in that thread's `kvm_run`, so a
//!   vCPU that was about to enter the guest returns at once with `EINTR` instead of running
//!   until its next exit (the race a bare signal leaves open), and a vCPU already in the
//!   guest is interrupted. The loop checks the latch after every exit.

use std::cell::Cell;
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::bus::{Bus, SharedBus};
use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable};

use crate::exit::{ExitReason, VmExit};
use crate::seccomp::ThreadFilter;
use crate::signals::kick_signal;
use crate::vcpu_state::StateRequests;

thread_local! {
    /// This thread's `kvm_run` mapping, for the kick handler. A `const` initialiser keeps
    /// the access free of lazy initialisation, so it is safe from a signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's live kvm_run mapping (set before the first
        // KVM_RUN, cleared before the VcpuFd drops); a volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (process-wide; once, before the vCPU threads start).
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The buses a vCPU dispatches to.
#[derive(Clone, Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<SharedBus>,
    /// Memory-mapped I/O.
    pub mmio: Arc<SharedBus>,
}

/// A vCPU ready to run.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    buses: Buses,
    exit: Arc<VmExit>,
    reports: Arc<StateRequests>,
    /// The last report generation this vCPU answered.
    reported: u64,
}

/// What one exit means for the run loop.
enum Step {
    Continue,
    Stop(ExitReason),
}

impl Vcpu {
    /// Wraps a configured vCPU fd. `reports` is where state reports are requested
    /// (`kill -USR1`); the vCPU answers after the kick that follows a request.
    pub fn new(
        id: u8,
        fd: VcpuFd,
        buses: Buses,
        exit: Arc<VmExit>,
        reports: Arc<StateRequests>,
    ) -> Self {
        Self {
            id,
            fd,
            buses,
            exit,
            reports,
            reported: 0,
        }
    }

    /// Starts the vCPU on its own thread, which installs `filter` (the vCPU kind's seccomp
    /// filter) before its first `KVM_RUN`; a filter the kernel refuses stops the VM.
    pub fn spawn(self, filter: ThreadFilter) -> std::io::Result<JoinHandle<()>> {
        let (id, exit) = (self.id, self.exit.clone());
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if let Err(e) = filter.apply() {
                    exit.request(ExitReason::VcpuError {
                        vcpu: id,
                        message: e.to_string(),
                    });
                    return;
                }
                // A bug must not leave the main thread waiting for a vCPU that is gone (release
                // builds abort on panic instead; the terminal is restored by the panic hook).
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run())).is_err() {
                    exit.request(ExitReason::VcpuError {
                        vcpu: id,
                        message: "its thread panicked (a passvm bug)".into(),
                    });
                }
            })
    }

    fn run(mut self) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run));
        while !self.exit.is_stopping() {
            match self.step(run) {
                Step::Continue => {}
                Step::Stop(reason) => {
                    self.exit.request(reason);
                    break;
                }
            }
        }
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    /// One `KVM_RUN` and its exit. `run` is this vCPU's `kvm_run` mapping, read for the
    /// details kvm-ioctls' `VcpuExit` leaves out.
    fn step(&mut self, run: *const kvm_run) -> Step {
        let id = self.id;
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked: clear the flag so a vCPU that is not stopping re-enters the guest.
                self.fd.set_kvm_immediate_exit(0);
                let generation = self.reports.generation();
                if generation != self.reported {
                    self.reported = generation;
                    log::warn!("{}", self.reports.report(id, &self.fd));
                }
                return Step::Continue;
            }
            Err(e) => return fail(id, format!("KVM_RUN: {e}")),
        };
        match exit {
            // A string instruction (rep ins/outs) arrives as one exit of `count` accesses of
            // `size` bytes each, all to the same port; kvm-ioctls joins them in one slice.
            VcpuExit::IoIn(port, data) => {
                port_in(&self.buses.pio.snapshot(), port, data, io_access_size(run), id)
            }
            VcpuExit::IoOut(port, data) => {
                port_out(&self.buses.pio.snapshot(), port, data, io_access_size(run), id)
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.buses.mmio.read(addr, data) {
                    log::debug!("vcpu{id}: unhandled MMIO read {addr:#x} ({} bytes)", data.len());
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.buses.mmio.write(addr, data) {
                    log::debug!("vcpu{id}: unhandled MMIO write {addr:#x} = {data:02x?}");
                }
            }
            VcpuExit::Intr => {}
            VcpuExit::Shutdown => {
                // Where it died is the first question about any triple fault. On AMD hosts
                // KVM re-initialises the vCPU before it reports the shutdown (the VMCB is
                // undefined after one), so the state may be the reset state, not the crash.
                let reset = self
                    .fd
                    .get_regs()
                    .is_ok_and(|r| r.rip == 0xfff0 && r.rsp == 0 && r.rflags == 0x2);
                log::error!(
                    "triple fault: {}{}",
                    self.reports.report(id, &self.fd),
                    if reset {
                        " (the reset state: this host's KVM re-initialised the vCPU before \
                         reporting the triple fault, as it does on AMD, so where the guest \
                         died is lost; the guest's own log is the only witness)"
                    } else {
                        ""
                    }
                );
                return Step::Stop(ExitReason::TripleFault { vcpu: id });
            }
            VcpuExit::SystemEvent(kind, _) => {
                return Step::Stop(match kind {
                    KVM_SYSTEM_EVENT_RESET => ExitReason::GuestReboot,
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::GuestPoweroff,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestPanic(String::new()),
                    other => {
                        return fail(id, format!("unexpected KVM system event {other}"));
                    }
                })
            }
            // With the in-kernel LAPIC, HLT never leaves KVM; one arriving here means the
            // irqchip is missing and nothing could ever wake this vCPU.
            VcpuExit::Hlt => return fail(id, "HLT exit without an in-kernel irqchip".into()),
            VcpuExit::FailEntry(reason, cpu) => {
                return fail(
                    id,
                    format!(
                        "KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu}); the initial register state is invalid for this host"
                    ),
                )
            }
            VcpuExit::InternalError => {
                log::error!("KVM internal error: {}", self.reports.report(id, &self.fd));
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active member of the union.
                let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                return fail(
                    id,
                    format!(
                        "KVM internal error, suberror {} ({}), data {:x?}",
                        internal.suberror,
                        internal_error_name(internal.suberror),
                        &internal.data[..n]
                    ),
                );
            }
            other => return fail(id, format!("unexpected exit {other:?}")),
        }
        Step::Continue
    }
}

fn port_in(bus: &Bus, port: u16, data: &mut [u8], size: usize, vcpu: u8) {
    for access in data.chunks_mut(size) {
        if !bus.read(u64::from(port), access) {
            log::debug!(
                "vcpu{vcpu}: unhandled port read {port:#x} ({} bytes)",
                access.len()
            );
        }
    }
}

fn port_out(bus: &Bus, port: u16, data: &[u8], size: usize, vcpu: u8) {
    for access in data.chunks(size) {
        if !bus.write(u64::from(port), access) {
            log::debug!("vcpu{vcpu}: unhandled port write {port:#x} = {access:02x?}");
        }
    }
}

/// The width of each access of the current `KVM_EXIT_IO` (1, 2 or 4).
fn io_access_size(run: *const kvm_run) -> usize {
    // SAFETY: only called while handling KVM_EXIT_IO, so `io` is the active union member;
    // the mapping outlives the vCPU loop. `addr_of!` reads the field without creating a
    // reference that would overlap the exit's data slice.
    let size = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read_volatile() };
    usize::from(size).max(1)
}

fn fail(vcpu: u8, message: String) -> Step {
    Step::Stop(ExitReason::VcpuError { vcpu, message })
}

fn internal_error_name(sub: u32) -> &'static str {
    match sub {
        1 => "instruction emulation failed",
        2 => "simultaneous #PF during event delivery",
        3 => "delivery event failed",
        4 => "unexpected exit reason",
        _ => "unknown",
    }
}

/// Interrupts every vCPU thread so it notices the stop latch.
pub fn kick(threads: &[JoinHandle<()>]) {
    for t in threads {
        if t.is_finished() {
            continue;
        }
        if let Err(e) = t.kill(kick_signal()) {
            log::warn!("cannot kick {:?}: {e}", t.thread().name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::Owner;
    use devices::legacy::{Serial, I8042};
    use std::io::Write;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A VM with 64 KiB of RAM and one vCPU in real mode at 0x1000 running `code`.
    fn real_mode_vcpu(code: &[u8]) -> (kvm_ioctls::VmFd, GuestMemoryMmap, VcpuFd) {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm (present when built)");
        let vm = kvm.create_vm().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(code, GuestAddress(0x1000)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0x10000,
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping is returned with the VM and outlives every vCPU run.
        unsafe { vm.set_user_memory_region(region).unwrap() };
        let fd = vm.create_vcpu(0).unwrap();
        let mut sregs = fd.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        fd.set_sregs(&sregs).unwrap();
        let mut regs = fd.get_regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        fd.set_regs(&regs).unwrap();
        (vm, mem, fd)
    }

    fn no_buses() -> Buses {
        Buses::default()
    }

    /// A string instruction's exit (`rep outsw`: 3 accesses of 2 bytes) becomes three
    /// writes to the same port, and `rep insb` three reads of it, not accesses to the ports
    /// that follow.
    #[test]
    fn string_port_io_is_split_into_accesses() {
        #[derive(Default)]
        struct Log(Vec<(u64, Vec<u8>)>, u8);
        impl devices::bus::BusDevice for Log {
            fn read(&mut self, _b: u64, offset: u64, data: &mut [u8]) {
                self.1 += 1;
                data.fill(self.1);
                self.0.push((offset, vec![]));
            }
            fn write(&mut self, _b: u64, offset: u64, data: &[u8]) {
                self.0.push((offset, data.to_vec()));
            }
        }
        let dev = Arc::new(Mutex::new(Log::default()));
        let mut bus = Bus::new();
        bus.insert(Owner::VMM, dev.clone(), 0xc000, 8).unwrap();
        port_out(&bus, 0xc000, &[1, 2, 3, 4, 5, 6], 2, 0);
        let mut input = [0u8; 3];
        port_in(&bus, 0xc000, &mut input, 1, 0);
        assert_eq!(input, [1, 2, 3]);
        let log = &dev.lock().unwrap().0;
        assert_eq!(
            log[..3],
            [(0, vec![1, 2]), (0, vec![3, 4]), (0, vec![5, 6])],
            "three word writes to offset 0"
        );
        assert!(
            log[3..].iter().all(|(off, _)| *off == 0),
            "three byte reads of offset 0"
        );
    }

    /// A vCPU spinning in the guest (`jmp $`) leaves KVM_RUN when kicked, and its thread ends.
    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn kick_interrupts_a_spinning_vcpu() {
        let (_vm, _mem, fd) = real_mode_vcpu(&[0xeb, 0xfe]);
        install_kick_handler().unwrap();
        let exit = Arc::new(VmExit::new().unwrap());
        let reports = Arc::new(StateRequests::default());
        // The vCPU filter on: the kick, the report and the stop all pass through it.
        let filter = crate::seccomp::Filters::new(crate::seccomp::SeccompMode::On)
            .unwrap()
            .thread(crate::seccomp::ThreadKind::Vcpu);
        let t = Vcpu::new(0, fd, no_buses(), exit.clone(), reports.clone())
            .spawn(filter)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!t.is_finished(), "the guest loop keeps the vCPU busy");
        // A state report (SIGUSR1's kick) is answered and the guest goes on.
        reports.request();
        kick(std::slice::from_ref(&t));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!t.is_finished(), "a report does not stop the vCPU");
        exit.request(ExitReason::Signal(libc::SIGTERM));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // One kick is enough: immediate_exit covers a vCPU that is between two KVM_RUNs.
        kick(std::slice::from_ref(&t));
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(t.is_finished(), "the kick got the vCPU out of KVM_RUN");
        t.join().unwrap();
        assert_eq!(exit.reason(), Some(ExitReason::Signal(libc::SIGTERM)));
    }

    /// Real-mode code writes "ok" to COM1 and pulls the i8042 reset line: the exits reach
    /// the devices through the port bus, and the reset stops the vCPU loop with a reboot.
    /// (This machine's KVM emulates such simple code even where Linux cannot run.)
    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn port_exits_reach_devices_and_the_reset_stops_the_loop() {
        #[rustfmt::skip]
        let code = [
            0xba, 0xf8, 0x03,   // mov dx, 0x3f8
            0xb0, b'o', 0xee,   // mov al, 'o'; out dx, al
            0xb0, b'k', 0xee,   // mov al, 'k'; out dx, al
            0xb0, 0xfe,         // mov al, 0xfe
            0xe6, 0x64,         // out 0x64, al   (i8042: pulse reset)
            0xf4,               // hlt            (never reached)
        ];
        let (_vm, _mem, fd) = real_mode_vcpu(&code);
        let exit = Arc::new(VmExit::new().unwrap());
        let out = Capture::default();
        let serial =
            Serial::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(out.clone())).unwrap();
        let reset = exit.clone();
        let kbd = I8042::new(
            Box::new(move || reset.request(ExitReason::GuestReboot)),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        );
        let pio = SharedBus::new();
        pio.insert(Owner::VMM, Arc::new(Mutex::new(serial)), 0x3f8, 8)
            .unwrap();
        pio.insert(Owner::VMM, Arc::new(Mutex::new(kbd)), 0x60, 5)
            .unwrap();
        let buses = Buses {
            pio: Arc::new(pio),
            ..Buses::default()
        };
        Vcpu::new(0, fd, buses, exit.clone(), Arc::default()).run();
        assert_eq!(exit.reason(), Some(ExitReason::GuestReboot));
        assert_eq!(out.0.lock().unwrap().as_slice(), b"ok");
    }
}
