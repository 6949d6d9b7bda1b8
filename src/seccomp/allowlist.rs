//! What each kind of thread may call: the system calls, and for `ioctl` the request
//! numbers (or, on the VMM thread, the ioctl families).
//!
//! Derived from the code paths each thread runs (docs/reliability.md, "seccomp", says how
//! and lists the sizes) and checked with `strace -f` on the development machine and
//! in the nested bed with the filters on. Every thread shares [`COMMON`]: what Rust's std
//! and glibc need on any thread once it runs (memory, locks, clocks, logging to stderr,
//! returning from a signal handler, ending the thread, the abort of a panic) and what the
//! SIGSYS report itself makes. A call a thread makes before its filter is installed
//! (its start, the VMM's whole setup) is not listed: it cannot be denied.

use kvm_bindings::{
    kvm_irq_routing, kvm_irqfd, kvm_lapic_state, kvm_msi, kvm_msrs, kvm_regs, kvm_sregs,
    kvm_translation, kvm_userspace_memory_region, kvm_vcpu_events, KVMIO,
};
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

// The request numbers, built as kvm-ioctls and vfio-ioctls build them (both keep their
// tables private); `ioctl_numbers_match_the_kernel_headers` checks them.
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);
ioctl_io_nr!(
    IOMMU_IOAS_MAP,
    iommufd_bindings::iommufd::IOMMUFD_TYPE as u32,
    iommufd_bindings::iommufd::IOMMUFD_CMD_IOAS_MAP
);

/// `TCSETS`: the SIGSYS report puts the terminal back from whichever thread it runs on
/// (glibc's `tcsetattr`); `TCSETS2` is the same for a glibc that uses `termios2`.
const TCSETS: u64 = libc::TCSETS;
const TCSETS2: u64 = 0x402c_542b;
/// `TCGETS` (`isatty`, `tcgetattr`), for the VMM thread.
const TCGETS: u64 = libc::TCGETS;

/// The ioctl type byte (bits 8-15 of a request) of KVM's ioctls.
const KVM_IOCTL_TYPE: u64 = KVMIO as u64;
/// VFIO's and iommufd's shared type byte, ';'.
const VFIO_IOCTL_TYPE: u64 = VFIO_TYPE as u64;

/// What every thread may call (see the module's comment). `write` is stderr (the log,
/// the SIGSYS report) here; `close`, `munmap` and `madvise` are how a thread frees what
/// it drops and how glibc returns a finished thread's stack.
pub const COMMON: &[(&str, i64)] = &[
    ("brk", libc::SYS_brk),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise),
    ("futex", libc::SYS_futex),
    ("sched_yield", libc::SYS_sched_yield),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("nanosleep", libc::SYS_nanosleep),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("getrandom", libc::SYS_getrandom),
    ("write", libc::SYS_write),
    ("close", libc::SYS_close),
    ("fcntl", libc::SYS_fcntl),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    // A panic aborts (release profile): glibc's abort() raises SIGABRT with tgkill.
    ("tgkill", libc::SYS_tgkill),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
];

/// The VMM thread (main: the event loop, then the teardown) beyond [`COMMON`].
pub const VMM: &[(&str, i64)] = &[
    // Hot-plug (src/hotplug.rs): the removal timer, and the prefault threads the first
    // device plugged into a VM without devices starts to map guest RAM.
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("clone3", libc::SYS_clone3),
    ("clone", libc::SYS_clone),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    // ... and the device's discovery and RAM map: RLIMIT_MEMLOCK (prlimit64), a
    // descriptor passed with the request (dup), the prefault's residency check
    // (mincore).
    ("prlimit64", libc::SYS_prlimit64),
    ("dup", libc::SYS_dup),
    ("mincore", libc::SYS_mincore),
    // The event loop: epoll, stdin, the signalfd, eventfds.
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("read", libc::SYS_read),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("eventfd2", libc::SYS_eventfd2),
    // Config space (VFIO's region reads and writes): a device error's status, the reset
    // on a guest reboot, the teardown's command-register write.
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    // The teardown: device reset and release (a bus reset finds the VM's group fds in
    // /proc/self/fd), then the managed=on devices given back to their drivers through
    // sysfs (open, write, readlink, the binding record removed).
    ("openat", libc::SYS_openat),
    ("lseek", libc::SYS_lseek),
    ("statx", libc::SYS_statx),
    ("newfstatat", libc::SYS_newfstatat),
    ("fstat", libc::SYS_fstat),
    ("readlink", libc::SYS_readlink),
    ("readlinkat", libc::SYS_readlinkat),
    ("getdents64", libc::SYS_getdents64),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("getcwd", libc::SYS_getcwd),
];

/// A vCPU thread beyond [`COMMON`]: `KVM_RUN` and what its exits lead to (the buses'
/// devices: region accesses with pread/pwrite, MSI-X vectors' eventfds made on first use
/// and polled for pending interrupts, INTx eventfds drained).
pub const VCPU: &[(&str, i64)] = &[
    ("read", libc::SYS_read),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("eventfd2", libc::SYS_eventfd2),
    ("poll", libc::SYS_poll),
];

/// The `dma-map` helper beyond [`COMMON`], and its prefault threads, which inherit its
/// filter: starting those threads (clone3, or clone as glibc's fallback) and what a new
/// thread does before its first instruction of ours (robust futex list, rseq, its
/// stack's bounds; the prefault threads have no name to set).
pub const DMA_MAP: &[(&str, i64)] = &[
    ("clone3", libc::SYS_clone3),
    ("clone", libc::SYS_clone),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
];

/// The `api` thread (the control API, `src/api/server.rs`) beyond [`COMMON`]: waiting
/// on its listening socket, its connection and its stop eventfd together (poll), taking
/// a connection (std's `accept` is accept4), reading a request with the descriptors that
/// come with it (recvmsg: SCM_RIGHTS for `vm.add-device`) and writing the answer (send,
/// which is sendto). Posting a request to the event loop is a channel (futex) and an
/// eventfd write, both in [`COMMON`]; the thread never reads its stop eventfd, it only
/// polls it.
pub const API: &[(&str, i64)] = &[
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("accept4", libc::SYS_accept4),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendto", libc::SYS_sendto),
    // Ending its side of a connection whose request was bad, before draining the rest.
    ("shutdown", libc::SYS_shutdown),
];

/// One allowed ioctl: an exact request or a whole ioctl family (the type byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ioctl {
    /// This request number.
    Request(&'static str, u64),
    /// Every request whose type byte (bits 8-15) is this.
    Family(&'static str, u64),
}

/// A vCPU's ioctls: its own run and state reads (the SIGUSR1 report, the triple-fault
/// report), and what a guest's config-space and BAR writes make a device do on the
/// vCPU's thread: move BAR memory slots, set MSI/MSI-X routes and irqfds, wire
/// interrupts and unmask INTx in VFIO.
pub fn vcpu_ioctls() -> Vec<Ioctl> {
    vec![
        Ioctl::Request("KVM_RUN", KVM_RUN()),
        Ioctl::Request("KVM_GET_REGS", KVM_GET_REGS()),
        Ioctl::Request("KVM_GET_SREGS", KVM_GET_SREGS()),
        Ioctl::Request("KVM_GET_VCPU_EVENTS", KVM_GET_VCPU_EVENTS()),
        Ioctl::Request("KVM_GET_LAPIC", KVM_GET_LAPIC()),
        Ioctl::Request("KVM_GET_MSRS", KVM_GET_MSRS()),
        Ioctl::Request("KVM_TRANSLATE", KVM_TRANSLATE()),
        Ioctl::Request("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION()),
        Ioctl::Request("KVM_SET_GSI_ROUTING", KVM_SET_GSI_ROUTING()),
        Ioctl::Request("KVM_IRQFD", KVM_IRQFD()),
        // A root port's hot-plug MSI, raised when a guest write enables it with an
        // event pending (src/hotplug.rs).
        Ioctl::Request("KVM_SIGNAL_MSI", KVM_SIGNAL_MSI()),
        Ioctl::Request("VFIO_DEVICE_SET_IRQS", VFIO_DEVICE_SET_IRQS()),
        Ioctl::Request("TCSETS", TCSETS),
        Ioctl::Request("TCSETS2", TCSETS2),
    ]
}

/// The `dma-map` helper's ioctls: the map call of either backend.
pub fn dma_map_ioctls() -> Vec<Ioctl> {
    vec![
        Ioctl::Request("VFIO_IOMMU_MAP_DMA", VFIO_IOMMU_MAP_DMA()),
        Ioctl::Request("IOMMU_IOAS_MAP", IOMMU_IOAS_MAP()),
        Ioctl::Request("TCSETS", TCSETS),
        Ioctl::Request("TCSETS2", TCSETS2),
    ]
}

/// The `api` thread's ioctls: only the SIGSYS report's terminal restore.
pub fn api_ioctls() -> Vec<Ioctl> {
    vec![
        Ioctl::Request("TCSETS", TCSETS),
        Ioctl::Request("TCSETS2", TCSETS2),
    ]
}

/// The VMM thread's ioctls: whole families, since its teardown releases every kind of
/// object the setup made (irqfds, memory slots, device interrupts, resets, the KVM-VFIO
/// device, the IOMMU space); none of its work is a socket, block device or other
/// family's ioctl.
pub fn vmm_ioctls() -> Vec<Ioctl> {
    vec![
        Ioctl::Family("KVM", KVM_IOCTL_TYPE),
        Ioctl::Family("VFIO and iommufd", VFIO_IOCTL_TYPE),
        Ioctl::Request("TCGETS", TCGETS),
        Ioctl::Request("TCSETS", TCSETS),
        Ioctl::Request("TCSETS2", TCSETS2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `<linux/kvm.h>`, `<linux/vfio.h>` and `<linux/iommufd.h>` (as
    /// strace prints them), so a wrong size or number in a macro above fails here.
    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE(), 0xc018_ae85);
        assert_eq!(KVM_GET_MSRS(), 0xc008_ae88);
        assert_eq!(KVM_GET_LAPIC(), 0x8400_ae8e);
        assert_eq!(KVM_GET_VCPU_EVENTS(), 0x8040_ae9f);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_SIGNAL_MSI(), 0x4020_aea5);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(IOMMU_IOAS_MAP(), 0x3b85);
        assert_eq!((TCGETS, TCSETS), (0x5401, 0x5402));
    }
}
