//! vCPU state reports on demand: `kill -USR1 <passvm pid>` logs one line per vCPU with
//! where it is (RIP, RSP, RFLAGS, CR3), what KVM is about to inject (pending or injected
//! exceptions, interrupts, NMIs, the interrupt shadow) and its local APIC (TPR, in-service
//! and requested vectors, the timer), its general registers and the words on top of its
//! stack (translated through the guest's page tables with `KVM_TRANSLATE`; feed them to
//! `addr2line -e vmlinux` for a guess at the call chain). It is the first thing to look at
//! when a guest hangs: a vCPU spinning with IF=0, an interrupt stuck in service, a timer
//! that stopped.
//!
//! The request is a generation counter: the event loop bumps it when SIGUSR1 arrives and
//! kicks every vCPU out of `KVM_RUN`; a vCPU that sees a generation it has not reported
//! yet reports from its own thread (the only one that may touch its state while it runs).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_vcpu_events, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// How many 64-bit words from the top of a vCPU's stack a report shows.
const STACK_WORDS: u64 = 24;

/// Requests for state reports, shared by the event loop and the vCPU threads.
#[derive(Debug, Default)]
pub struct StateRequests {
    generation: AtomicU64,
    /// Guest RAM, to show the top of each vCPU's stack (none: registers only).
    mem: Option<GuestMemoryMmap>,
}

impl StateRequests {
    /// Requests whose reports include the stack words read from `mem`.
    pub fn with_memory(mem: GuestMemoryMmap) -> Self {
        Self {
            generation: AtomicU64::new(0),
            mem: Some(mem),
        }
    }

    /// Asks every vCPU for a report; returns the new generation.
    pub fn request(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The latest generation requested (0: none yet).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The report of vCPU `id` (see [`report`]).
    pub fn report(&self, id: u8, fd: &VcpuFd) -> String {
        report(id, fd, self.mem.as_ref())
    }
}

/// One line describing vCPU `id`, read with its fd's GET ioctls (a failing one is named
/// in the line instead of its part), with the top of its stack when `mem` is given.
pub fn report(id: u8, fd: &VcpuFd, mem: Option<&GuestMemoryMmap>) -> String {
    let mut line = format!("vcpu{id}:");
    let regs = fd.get_regs();
    match &regs {
        Ok(r) => {
            let _ = write!(
                line,
                " rip={:#x} rsp={:#x} rflags={:#x} (IF={}) rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                (r.rflags >> 9) & 1,
                r.rax,
                r.rbx,
                r.rcx,
                r.rdx,
                r.rsi,
                r.rdi,
                r.rbp,
            );
        }
        Err(e) => {
            let _ = write!(line, " regs: {e}");
        }
    }
    match fd.get_sregs() {
        Ok(s) => {
            let _ = write!(line, " cr3={:#x} cpl={}", s.cr3, s.cs.selector & 3);
        }
        Err(e) => {
            let _ = write!(line, " sregs: {e}");
        }
    }
    match fd.get_vcpu_events() {
        Ok(ev) => line.push_str(&events(&ev)),
        Err(e) => {
            let _ = write!(line, " events: {e}");
        }
    }
    match fd.get_lapic() {
        Ok(lapic) => line.push_str(&lapic_summary(&lapic)),
        Err(e) => {
            let _ = write!(line, " lapic: {e}");
        }
    }
    line.push_str(&tsc_deadline(fd));
    if let (Ok(r), Some(mem)) = (&regs, mem) {
        line.push_str(&stack_words(fd, r, mem));
    }
    line
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The armed TSC deadline relative to the guest's TSC now (negative: already passed,
/// so the timer interrupt is due), or "none" when the deadline is 0 (disarmed).
fn tsc_deadline(fd: &VcpuFd) -> String {
    let entries = [MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE].map(|index| kvm_msr_entry {
        index,
        ..Default::default()
    });
    let Ok(mut msrs) = Msrs::from_entries(&entries) else {
        return String::new();
    };
    match fd.get_msrs(&mut msrs) {
        Ok(2) => {
            let [tsc, deadline] = [msrs.as_slice()[0].data, msrs.as_slice()[1].data];
            if deadline == 0 {
                " tsc-deadline=none".to_owned()
            } else {
                format!(" tsc-deadline=now{:+}", deadline as i128 - tsc as i128)
            }
        }
        Ok(_) => " tsc-deadline=unreadable".to_owned(),
        Err(e) => format!(" tsc-deadline: {e}"),
    }
}

/// The words on top of the stack, each address translated through the guest's own page
/// tables (KVM_TRANSLATE); stops at the first address that does not translate or read.
fn stack_words(fd: &VcpuFd, regs: &kvm_regs, mem: &GuestMemoryMmap) -> String {
    let mut out = String::from(" stack=[");
    for i in 0..STACK_WORDS {
        let gva = regs.rsp.wrapping_add(i * 8);
        let word = fd
            .translate_gva(gva)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| mem.read_obj::<u64>(GuestAddress(t.physical_address)).ok());
        match word {
            Some(w) => {
                let _ = write!(out, "{}{w:#x}", if i == 0 { "" } else { " " });
            }
            None => {
                let _ = write!(out, "{}unmapped@{gva:#x}", if i == 0 { "" } else { " " });
                break;
            }
        }
    }
    out.push(']');
    out
}

/// KVM's pending and injected events, only the ones that are set.
fn events(ev: &kvm_vcpu_events) -> String {
    let mut out = String::new();
    if ev.exception.injected != 0 || ev.exception.pending != 0 {
        let _ = write!(
            out,
            " exception={} ({})",
            ev.exception.nr,
            if ev.exception.injected != 0 {
                "injected"
            } else {
                "pending"
            }
        );
    }
    if ev.interrupt.injected != 0 {
        let _ = write!(out, " interrupt={:#x} injected", ev.interrupt.nr);
    }
    if ev.interrupt.shadow != 0 {
        out.push_str(" irq-shadow");
    }
    if ev.nmi.injected != 0 || ev.nmi.pending != 0 || ev.nmi.masked != 0 {
        let _ = write!(
            out,
            " nmi(injected={} pending={} masked={})",
            ev.nmi.injected, ev.nmi.pending, ev.nmi.masked
        );
    }
    out
}

// Local APIC register offsets (Intel SDM vol. 3, table 11-1), as KVM lays them out in
// `kvm_lapic_state.regs`.
const APIC_ID: usize = 0x20;
const APIC_TPR: usize = 0x80;
const APIC_ISR: usize = 0x100;
const APIC_IRR: usize = 0x200;
const APIC_LVT_TIMER: usize = 0x320;
const APIC_TMICT: usize = 0x380;
const APIC_TMCCT: usize = 0x390;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = |i: usize| lapic.regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

/// The vectors set in a 256-bit APIC register array (ISR, IRR, TMR): eight 32-bit
/// registers, 16 bytes apart.
fn lapic_vectors(lapic: &kvm_lapic_state, base: usize) -> Vec<u8> {
    (0..8u8)
        .flat_map(|i| {
            let bits = lapic_reg(lapic, base + usize::from(i) * 0x10);
            (0..32u8)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| i * 32 + b)
        })
        .collect()
}

fn lapic_summary(lapic: &kvm_lapic_state) -> String {
    let timer = lapic_reg(lapic, APIC_LVT_TIMER);
    let mode = match (timer >> 17) & 3 {
        0 => "one-shot",
        1 => "periodic",
        2 => "tsc-deadline",
        _ => "reserved",
    };
    format!(
        " apic(id={} tpr={:#x} isr={:x?} irr={:x?} timer={:#x}/{}{} tmict={:#x} tmcct={:#x})",
        lapic_reg(lapic, APIC_ID) >> 24,
        lapic_reg(lapic, APIC_TPR),
        lapic_vectors(lapic, APIC_ISR),
        lapic_vectors(lapic, APIC_IRR),
        timer & 0xff,
        mode,
        if timer & (1 << 16) != 0 {
            ",masked"
        } else {
            ""
        },
        lapic_reg(lapic, APIC_TMICT),
        lapic_reg(lapic, APIC_TMCCT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            lapic.regs[offset + i] = b as _;
        }
    }

    #[test]
    fn apic_vectors_are_read_across_the_eight_registers() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_ISR, 1 << 31); // vector 0x1f
        set_reg(&mut lapic, APIC_ISR + 7 * 0x10, 1 << 15); // vector 0xef
        set_reg(&mut lapic, APIC_IRR + 0x10, 1 << 1); // vector 0x21
        assert_eq!(lapic_vectors(&lapic, APIC_ISR), [0x1f, 0xef]);
        assert_eq!(lapic_vectors(&lapic, APIC_IRR), [0x21]);
    }

    #[test]
    fn the_summary_names_the_timer_mode_and_mask() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_ID, 1 << 24);
        set_reg(&mut lapic, APIC_LVT_TIMER, 1 << 17 | 0xec);
        set_reg(&mut lapic, APIC_TMICT, 0x1000);
        let s = lapic_summary(&lapic);
        assert!(s.contains("id=1 "), "{s}");
        assert!(s.contains("timer=0xec/periodic tmict=0x1000"), "{s}");
        set_reg(&mut lapic, APIC_LVT_TIMER, 1 << 16);
        assert!(lapic_summary(&lapic).contains("timer=0x0/one-shot,masked"));
    }

    #[test]
    fn events_list_only_what_is_set() {
        let mut ev = kvm_vcpu_events::default();
        assert_eq!(events(&ev), "");
        ev.interrupt.injected = 1;
        ev.interrupt.nr = 0xec;
        ev.nmi.pending = 1;
        assert_eq!(
            events(&ev),
            " interrupt=0xec injected nmi(injected=0 pending=1 masked=0)"
        );
    }

    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn a_fresh_vcpu_reports_its_reset_state() {
        let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm (present when built)");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        let line = report(0, &fd, None);
        // Reset state: RIP 0xfff0, RFLAGS 2 (interrupts off).
        assert!(line.starts_with("vcpu0: rip=0xfff0 "), "{line}");
        assert!(line.contains("(IF=0)"), "{line}");
        assert!(line.contains(" apic(id=0 "), "{line}");
        assert!(line.contains(" tsc-deadline="), "{line}");
    }

    #[test]
    fn requests_are_generations() {
        let r = StateRequests::default();
        assert_eq!(r.generation(), 0);
        assert_eq!(r.request(), 1);
        assert_eq!(r.request(), 2);
        assert_eq!(r.generation(), 2);
    }
}
