//! Builds a VM from a [`VmConfig`] and runs it to completion.
//!
//! Build order (each step needs the previous ones):
//! 1. `/dev/kvm`, the VM fd, and the capabilities passvm cannot work without;
//! 2. the TSS and identity-map pages KVM needs on Intel for real-mode emulation, placed
//!    in the unused top of the 4 GiB space, above the MSI window and away from RAM and the
//!    32-bit BAR hole (`set_identity_map_address` must precede the first vCPU);
//! 3. the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT, then [`Interrupts`], which
//!    takes over the GSI routing table;
//! 4. guest RAM (`memory::create_guest_memory`) and one memslot per region;
//! 5. the kernel, initramfs, command line and boot tables (`boot::load`);
//! 6. the legacy devices and the PCI root on the port-I/O bus, then the passthrough
//!    devices (`passthrough::attach`: after the irqchip, which their INTx and MSI routes
//!    need, and after RAM, which their DMA mappings need);
//! 7. the vCPUs, each configured by `boot::setup_vcpu`.
//!
//! Threading model: the main thread runs the event loop (event-manager: stdin, the
//! termination signalfd, the UART's FIFO-space event, the stop latch and the passthrough
//! devices' events); each vCPU has
//! its own thread. Devices are `Arc<Mutex<_>>` on shared buses and run on whichever vCPU
//! thread touched them; interrupts leave through irqfds, never through the main thread.
//! Any thread may set the stop latch ([`VmExit`]); the main thread then kicks the vCPUs,
//! joins them and reports the reason.

use std::io;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use devices::bus::{BusError, Owner};
use devices::legacy::{cmos, i8042, serial, Cmos, Serial, Sink, I8042};
use devices::pci::ecam::EcamWindow;
use devices::pci::host_bridge::PortEvents;
use devices::pci::host_bridge::{PciRoot, PCI_CONFIG_BASE, PCI_CONFIG_PORTS};
use devices::pci::{InterruptRouting, RoutingError};
use devices::power::{PowerButton, PowerControls, POWER_BASE, POWER_BUTTON_GSI, POWER_PORTS};
use devices::vfio::discovery::ManagedBinding;
use devices::vfio::vm::kvm::SlotPool;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::acpi;
use crate::api::{self, ApiSetup};
use crate::boot::{self, BootConfig, BootError};
use crate::cli::VmArgs;
use crate::config::{DmaMapTiming, SerialConfig, VmConfig};
use crate::console::{self, ConsoleInput, ConsoleOutput};
use crate::exit::{ExitReason, VmExit, EXIT_ERROR, EXIT_USAGE};
use crate::hotplug::{self, HotplugError};
use crate::memory::{self, MemoryError};
use crate::passthrough::{self, PassthroughSetupError, PassthroughVm, Prepared, VmParts};
use crate::seccomp::{Filters, SeccompMode, ThreadKind};
use crate::signals::TerminationSignals;
use crate::terminal::RawMode;
use crate::timings::PhaseTimings;
use crate::vcpu::{self, Buses, Vcpu};
use crate::vcpu_state::StateRequests;
use devices::pci::kvm_routing::Interrupts;

/// KVM's TSS (three pages) for vCPUs in real mode on Intel: in the unused space between the
/// LAPIC/MSI window and the 4 GiB boundary (where firmware would be), outside RAM and BARs.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page table page (Intel, unrestricted guest off), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// A failure while building or running the VM. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` is missing.
    #[error("/dev/kvm does not exist: enable virtualization (VT-x/AMD-V) in the firmware and load the kvm_intel or kvm_amd module")]
    KvmMissing,
    /// `/dev/kvm` is not accessible.
    #[error("no permission to open /dev/kvm: add yourself to the kvm group (sudo usermod -aG kvm $USER, then log in again) or run as root")]
    KvmPermission,
    /// Other `/dev/kvm` failures.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(io::Error),
    /// A KVM feature passvm relies on.
    #[error("this KVM lacks {0}, which passvm needs; use a newer host kernel")]
    KvmCapability(&'static str),
    /// Too many vCPUs for this host.
    #[error("--cpus boot={want}: this host's KVM allows at most {max} vCPUs per VM")]
    TooManyVcpus {
        /// Requested.
        want: u8,
        /// KVM's limit.
        max: usize,
    },
    /// A KVM call during setup.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The step.
        op: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The ACPI tables.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
    /// Passthrough devices.
    #[error(transparent)]
    Passthrough(#[from] PassthroughSetupError),
    /// The control API's socket.
    #[error(transparent)]
    Api(#[from] crate::api::socket::ApiSocketError),
    /// The hot-plug root ports.
    #[error(transparent)]
    Hotplug(#[from] HotplugError),
    /// GSI routing.
    #[error("interrupt routing: {0}")]
    Routing(#[from] RoutingError),
    /// The serial log file.
    #[error("--serial file={path}: cannot open it ({source}); check the directory exists and is writable")]
    SerialFile {
        /// The path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// Port ranges (a programming error, reported rather than panicking).
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// Event loop, threads, eventfds.
    #[error("{what}: {source}")]
    Host {
        /// The step.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm {
        op,
        source: io::Error::from_raw_os_error(e.errno()),
    }
}

fn host_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

/// Runs the VM described by `args` and returns the process exit code.
pub fn run(args: VmArgs) -> ExitCode {
    let mut timings = PhaseTimings::start();
    let config = match VmConfig::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("passvm: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if config.dry_run {
        return crate::dry_run::print_plan(&config);
    }
    // Compiled before anything runs, so a filter that cannot be built fails at once.
    let filters = match Filters::new(config.seccomp) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("passvm: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    // Before anything slow (binding, pinning RAM) and before any thread: a SIGUSR1 or
    // SIGPWR must queue for the event loop, not kill passvm with its default action.
    if let Err(e) = crate::signals::block() {
        eprintln!("passvm: cannot block the VMM's signals: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    timings.mark("config");
    let prepared = match passthrough::prepare(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("passvm: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    timings.mark("discovery");
    match Vm::build(&config, prepared, timings, filters).and_then(Vm::run) {
        Ok(reason) => {
            eprintln!("passvm: {reason}");
            ExitCode::from(reason.code())
        }
        Err(e) => {
            eprintln!("passvm: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// A built VM, ready to start.
pub struct Vm {
    // Field order is drop order: vCPUs and devices go before the memory they point into.
    vcpus: Vec<Vcpu>,
    /// State report requests (SIGUSR1), shared with the vCPUs and the signalfd.
    reports: Arc<StateRequests>,
    input: Option<ConsoleInput>,
    raw_mode: Option<RawMode>,
    signals: TerminationSignals,
    exit: Arc<VmExit>,
    /// The control API (`--api-socket`), started with the vCPUs.
    api: Option<ApiSetup>,
    /// The threads' seccomp filters, installed as each thread starts its work.
    filters: Filters,
    _buses: Buses,
    _pci: Arc<Mutex<PciRoot>>,
    /// The hot-plug slots' event-loop side (with their devices), when the VM has ports.
    slot_watch: Option<hotplug::SlotWatch>,
    passthrough: PassthroughVm,
    _interrupts: Arc<Interrupts>,
    _vm: Arc<VmFd>,
    _mem: GuestMemoryMmap,
    // Last: giving a device back to its driver blocks while it is still open.
    managed: Vec<ManagedBinding>,
}

fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| kvm_open_error(e.errno()))
}

fn kvm_open_error(errno: i32) -> VmError {
    match errno {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        n => VmError::KvmOpen(io::Error::from_raw_os_error(n)),
    }
}

fn check_capabilities(kvm: &Kvm) -> Result<(), VmError> {
    let needed = [
        (Cap::Irqchip, "an in-kernel irqchip (KVM_CAP_IRQCHIP)"),
        (Cap::Irqfd, "irqfd (KVM_CAP_IRQFD)"),
        (Cap::IrqRouting, "GSI routing (KVM_CAP_IRQ_ROUTING)"),
        (Cap::Pit2, "the in-kernel PIT (KVM_CAP_PIT2)"),
        (Cap::UserMemory, "user memory regions (KVM_CAP_USER_MEMORY)"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ];
    for (cap, name) in needed {
        if !kvm.check_extension(cap) {
            return Err(VmError::KvmCapability(name));
        }
    }
    Ok(())
}

/// Maps every region of `mem` into the VM, one memslot each.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| VmError::Host {
                what: "guest memory region",
                source: io::Error::other(e.to_string()),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
        // the Vm keeps until after every vCPU has stopped; slots do not overlap because
        // vm-memory rejects overlapping regions.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn serial_output(cfg: &SerialConfig) -> Result<Option<Box<dyn io::Write + Send>>, VmError> {
    Ok(match cfg {
        SerialConfig::Off => None,
        SerialConfig::Null => Some(Box::new(io::sink())),
        SerialConfig::Tty => Some(Box::new(io::stdout())),
        SerialConfig::File(p) => Some(Box::new(console::open_log(p).map_err(|source| {
            VmError::SerialFile {
                path: p.display().to_string(),
                source,
            }
        })?)),
    })
}

impl Vm {
    /// Creates the VM, loads the guest and configures the vCPUs, without running anything.
    /// `timings` holds the phases before (configuration, discovery); the build adds its own
    /// and logs the line.
    pub fn build(
        cfg: &VmConfig,
        mut prepared: Prepared,
        mut timings: PhaseTimings,
        filters: Filters,
    ) -> Result<Self, VmError> {
        // Dropped after every local below on an error, i.e. after the devices.
        let managed = prepared.take_guards();
        let on_ports = prepared.take_port_devices();
        let kvm = open_kvm()?;
        check_capabilities(&kvm)?;
        let max = kvm.get_max_vcpus();
        if usize::from(cfg.vcpus) > max {
            return Err(VmError::TooManyVcpus {
                want: cfg.vcpus,
                max,
            });
        }
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        // The dummy speaker lets the in-kernel PIT own port 0x61 too.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let interrupts = Arc::new(Interrupts::new(vm.clone())?);
        timings.mark("kvm");

        // Devices first: the IOMMU space they open in bounds the guest-physical map.
        let opened = passthrough::open(&prepared, &vm)?;
        timings.mark("open devices");
        let host_bits = crate::boot::cpuid::host_phys_bits(&kvm);
        let iova_end = opened.as_ref().and_then(passthrough::Opened::iova_end);
        let limit = memory::phys_limit(host_bits, iova_end);
        log::info!(
            "guest-physical limit {limit:#x}: host CPU {host_bits} bits{}",
            match iova_end {
                Some(e) => format!(", IOMMU IOVA range up to {e:#x}"),
                None => String::new(),
            }
        );
        let layout = memory::MemoryLayout::with_limit(cfg.memory.size, limit)?;
        let mem = memory::create_guest_memory_in(&layout, cfg.memory.hugepages)?;
        register_memory(&vm, &mem)?;
        timings.mark("ram");
        let rsdp = acpi::write(&mem, &acpi::inputs(cfg, &layout))?;
        let boot_info = boot::load(
            &mem,
            &BootConfig {
                kernel: &cfg.kernel,
                initramfs: cfg.initramfs.as_deref(),
                cmdline: &cfg.cmdline,
                vcpus: cfg.vcpus,
                rsdp: Some(rsdp),
            },
        )?;

        timings.mark("acpi + kernel");
        let exit = Arc::new(VmExit::new().map_err(host_err("stop eventfd"))?);
        let buses = Buses::default();
        let serial = add_legacy_devices(cfg, &buses, &interrupts, &exit)?;
        // The guest's ACPI power button (the DSDT's GED on POWER_BUTTON_GSI): SIGPWR
        // presses it.
        let button_irq = EventFd::new(EFD_NONBLOCK).map_err(host_err("power button irqfd"))?;
        interrupts.register_irqfd(&button_irq, POWER_BUTTON_GSI)?;
        let button = Arc::new(PowerButton::new(button_irq));
        // Bus 0: the host bridge, then the passthrough devices (src/passthrough.rs).
        let pci = Arc::new(Mutex::new(PciRoot::new()));
        buses
            .pio
            .insert(Owner::VMM, pci.clone(), PCI_CONFIG_BASE, PCI_CONFIG_PORTS)?;
        // The same functions, all 4 KiB of their config space, through the MCFG's window.
        buses.mmio.insert(
            Owner::VMM,
            Arc::new(Mutex::new(EcamWindow::new(pci.clone()))),
            memory::ECAM_START,
            memory::ECAM_SIZE,
        )?;
        timings.mark("platform devices");
        let dma_map = cfg
            .memory
            .dma_map
            .resolve(cfg.vcpus, devices::vfio::iommu::all_cores());
        if !cfg.devices.is_empty() && cfg.memory.dma_map == DmaMapTiming::Auto {
            log::info!(
                "DMA map {} (dma_map=auto: {} host cores for {} vCPU(s) and the VMM)",
                match dma_map {
                    DmaMapTiming::Background => "beside the boot",
                    _ => "before the boot",
                },
                devices::vfio::iommu::all_cores(),
                cfg.vcpus
            );
        }
        let windows = hotplug::plan_windows(&layout, cfg.pcie_ports)?;
        let passthrough = passthrough::attach(
            &prepared,
            opened,
            &VmParts {
                vm: &vm,
                boot_windows: (windows.boot_mmio32, windows.boot_mmio64),
                nr_memslots: kvm.get_nr_memslots(),
                interrupts: &interrupts,
                buses: &buses,
                pci: &pci,
                mem: &mem,
                layout: &layout,
                vcpus: cfg.vcpus,
                dma_map,
                exit: &exit,
                dma_filter: filters.thread(ThreadKind::DmaMap),
            },
        )?;

        // The hot-plug ports after the boot devices, so those keep their slots.
        let ports = hotplug::Ports::create(&windows, &pci, &vm)?;
        let hotplug = if ports.is_empty() {
            None
        } else {
            let events = PortEvents::new().map_err(host_err("root port eventfd"))?;
            pci.lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_port_events(events.clone());
            let (space, slots) = passthrough.shared();
            let slots = slots.unwrap_or_else(|| {
                Arc::new(SlotPool::new(
                    u32::try_from(mem.num_regions()).unwrap_or(u32::MAX),
                    u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX),
                ))
            });
            let routing: Arc<dyn InterruptRouting> = interrupts.clone();
            let hw = hotplug::PlugContext {
                vm: vm.clone(),
                slots,
                pio: buses.pio.clone(),
                mmio: buses.mmio.clone(),
                pci: pci.clone(),
                routing,
                windows: passthrough::vm_windows(&layout),
                mem: mem.clone(),
                backend: cfg.vfio_backend,
                iommufd_fd: cfg.iommufd_fd,
                mem_size: cfg.memory.size,
            };
            let mut slots =
                hotplug::HotplugSlots::new(ports, space, hw).map_err(host_err("hot-plug timer"))?;
            for d in on_ports {
                let given = d.spec.given.clone();
                slots
                    .plug_at_boot(d.spec, d.guards)
                    .map_err(|e| HotplugError::Boot {
                        given,
                        why: e.to_string(),
                    })?;
            }
            let engine = Arc::new(Mutex::new(slots));
            let watch = hotplug::SlotWatch::new(engine.clone(), events);
            Some((engine, watch))
        };
        timings.mark(match dma_map {
            DmaMapTiming::Background => "passthrough",
            DmaMapTiming::BeforeBoot | DmaMapTiming::Auto => "dma map + passthrough",
        });
        let reports = Arc::new(StateRequests::with_memory(mem.clone()));
        let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
        for id in 0..cfg.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            boot::setup_vcpu(&kvm, &fd, id, cfg.vcpus, &boot_info, &mem)?;
            vcpus.push(Vcpu::new(
                id,
                fd,
                buses.clone(),
                exit.clone(),
                reports.clone(),
            ));
        }

        timings.mark("vcpus");
        log::info!("{timings}");

        // Input only from a terminal or pipe the user gave us, and only with --serial tty.
        let input = match (&cfg.serial, serial) {
            (SerialConfig::Tty, Some(s)) => Some(ConsoleInput::new(s)),
            _ => None,
        };
        let mut api = api::prepare(cfg, &button, passthrough.listed())?;
        let slot_watch = hotplug.map(|(engine, watch)| {
            if let Some(a) = api.as_mut() {
                a.hotplug = Box::new(hotplug::SharedSlots(engine));
            }
            watch
        });
        // Signals are blocked here, before any thread exists, so every thread inherits it.
        let signals = TerminationSignals::new(exit.clone(), reports.clone(), button.clone())
            .map_err(host_err("signalfd"))?;
        vcpu::install_kick_handler().map_err(host_err("vCPU kick signal handler"))?;
        let raw_mode = match input {
            Some(_) => RawMode::enable_on_stdin().map_err(host_err("terminal raw mode"))?,
            None => None,
        };
        Ok(Self {
            vcpus,
            reports,
            input,
            raw_mode,
            signals,
            exit,
            api,
            filters,
            _buses: buses,
            _pci: pci,
            slot_watch,
            passthrough,
            _interrupts: interrupts,
            _vm: vm,
            _mem: mem,
            managed,
        })
    }

    /// Starts the vCPUs, runs the event loop until something stops the VM, and tears down.
    pub fn run(self) -> Result<ExitReason, VmError> {
        // Bindings drop in reverse order on an early return: devices (held by the buses,
        // the PCI root and `passthrough`) before guest RAM, the managed bindings last.
        let Self {
            managed,
            _mem,
            _vm,
            passthrough,
            _interrupts,
            slot_watch,
            _pci,
            _buses,
            filters,
            api,
            exit,
            signals,
            raw_mode,
            input,
            reports,
            vcpus,
        } = self;
        let mut em = EventManager::<Box<dyn MutEventSubscriber + Send>>::new()
            .map_err(|e| host_err("event loop")(io::Error::other(format!("{e:?}"))))?;
        em.add_subscriber(Box::new(signals));
        em.add_subscriber(Box::new(StopWatch(exit.clone())));
        if let Some(input) = input {
            em.add_subscriber(Box::new(input));
        }
        if let Some(pt) = passthrough.subscriber(exit.clone()) {
            em.add_subscriber(Box::new(pt));
        }
        if let Some(w) = slot_watch {
            em.add_subscriber(Box::new(w));
        }

        let mut threads = Vec::with_capacity(vcpus.len());
        for v in vcpus {
            match v.spawn(filters.thread(ThreadKind::Vcpu)) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    exit.request(ExitReason::VcpuError {
                        vcpu: threads.len() as u8,
                        message: format!("cannot start its thread: {e}"),
                    });
                    break;
                }
            }
        }
        // The API thread with the vCPUs, before this thread's filter (which would bind it
        // too); its requests come through the event loop.
        let api_server = api.and_then(|setup| {
            match api::start(setup, exit.clone(), filters.thread(ThreadKind::Api)) {
                Ok((handler, server)) => {
                    em.add_subscriber(Box::new(handler));
                    Some(server)
                }
                Err(e) => {
                    exit.request(ExitReason::VmmError(format!("cannot start the API: {e}")));
                    None
                }
            }
        });
        // After the vCPU threads exist (one started later would be bound by this list
        // too), before the loop: from here on this thread only serves events and tears
        // down.
        if let Err(e) = filters.thread(ThreadKind::Vmm).apply() {
            exit.request(ExitReason::VmmError(e.to_string()));
        } else if filters.mode() != SeccompMode::Off {
            log::info!("seccomp {}: a filter on every thread", filters.mode());
        }
        let mut kicked_for = 0;
        while !exit.is_stopping() {
            if let Err(e) = em.run() {
                log::error!("event loop: {e:?}");
                exit.request(ExitReason::VcpuError {
                    vcpu: 0,
                    message: format!("event loop failed: {e:?}"),
                });
            }
            // A state report was asked for (SIGUSR1): the vCPUs answer once kicked.
            if reports.generation() != kicked_for {
                kicked_for = reports.generation();
                vcpu::kick(&threads);
            }
        }
        let mut down = PhaseTimings::named("tear-down");
        vcpu::kick(&threads);
        for t in threads {
            if t.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        down.mark("vcpus");
        drop(raw_mode);
        let reason = exit.reason().unwrap_or_else(|| {
            ExitReason::VmmError("stopped without a reason (a passvm bug)".into())
        });
        if reason == ExitReason::GuestReboot {
            passthrough.reset_for_reboot();
        }
        // Teardown order: everything holding a passthrough device (event loop, buses, PCI
        // root), then the devices themselves, then the managed bindings.
        drop(em);
        // After the event loop: a request it will not answer now gets 503 (stopping).
        drop(api_server);
        drop(_buses);
        drop(_pci);
        drop(passthrough);
        down.mark("devices");
        drop(managed);
        down.mark("managed bindings");
        // The last holders of the VM fd and guest RAM: the munmap of a large guest's RAM
        // is part of the exit's time too.
        drop(reports);
        drop(_interrupts);
        drop(_vm);
        drop(_mem);
        down.mark("vm + ram");
        log::info!("{down}");
        Ok(reason)
    }
}

/// Puts COM1, the i8042, CMOS and the POST port on the port bus. Returns COM1
/// for the console input, if there is one.
fn add_legacy_devices(
    cfg: &VmConfig,
    buses: &Buses,
    interrupts: &Interrupts,
    exit: &Arc<VmExit>,
) -> Result<Option<Arc<Mutex<Serial>>>, VmError> {
    let pio = &buses.pio;
    let serial = match serial_output(&cfg.serial)? {
        Some(out) => {
            let irq = EventFd::new(EFD_NONBLOCK).map_err(host_err("serial irqfd"))?;
            interrupts.register_irqfd(&irq, serial::COM1_IRQ)?;
            let out = Box::new(ConsoleOutput::new(out, exit.clone()));
            let s = Arc::new(Mutex::new(
                Serial::new(irq, out).map_err(host_err("serial"))?,
            ));
            pio.insert(Owner::VMM, s.clone(), serial::COM1_BASE, serial::UART_PORTS)?;
            Some(s)
        }
        None => None,
    };
    let reset_exit = exit.clone();
    let kbd_irq = EventFd::new(EFD_NONBLOCK).map_err(host_err("i8042 irqfd"))?;
    interrupts.register_irqfd(&kbd_irq, i8042::I8042_KBD_IRQ)?;
    let kbd = I8042::new(
        Box::new(move || reset_exit.request(ExitReason::GuestReboot)),
        kbd_irq,
    );
    pio.insert(
        Owner::VMM,
        Arc::new(Mutex::new(kbd)),
        i8042::I8042_BASE,
        i8042::I8042_PORTS,
    )?;
    pio.insert(
        Owner::VMM,
        Arc::new(Mutex::new(Cmos::new())),
        cmos::CMOS_BASE,
        cmos::CMOS_PORTS,
    )?;
    pio.insert(Owner::VMM, Arc::new(Mutex::new(Sink::new(0xff))), 0x80, 1)?;
    let (off_exit, reset_exit) = (exit.clone(), exit.clone());
    let power = PowerControls::new(
        Box::new(move || off_exit.request(ExitReason::GuestPoweroff)),
        Box::new(move || {
            log::info!("the guest reset through the ACPI reset register");
            reset_exit.request(ExitReason::GuestReboot)
        }),
    );
    pio.insert(
        Owner::VMM,
        Arc::new(Mutex::new(power)),
        POWER_BASE,
        POWER_PORTS,
    )?;
    Ok(serial)
}

/// Wakes the event loop when the stop latch is set.
struct StopWatch(Arc<VmExit>);

impl MutEventSubscriber for StopWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.evt(), EventSet::IN)) {
            log::error!("cannot watch the stop eventfd: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.evt().read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_open_failures_say_what_to_do() {
        let missing = kvm_open_error(libc::ENOENT).to_string();
        assert!(missing.contains("/dev/kvm does not exist") && missing.contains("kvm_intel"));
        let perm = kvm_open_error(libc::EACCES).to_string();
        assert!(perm.contains("add yourself to the kvm group"), "{perm}");
        let other = kvm_open_error(libc::EBUSY).to_string();
        assert!(other.starts_with("cannot open /dev/kvm: "), "{other}");
    }
}
