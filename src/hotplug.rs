//! PCIe root ports with hot-plug slots (`--pcie-ports N`, docs/hotplug.md).
//!
//! Each port is a [`RootPort`] on bus 0 with its own secondary bus (`1..=N`, numbered by
//! passvm as firmware would, and kept by Linux) and its own slice of the VM's BAR
//! windows: a non-prefetchable window from the top of the 32-bit window and a
//! prefetchable 64-bit one from the top of the 64-bit window, reserved before the boot
//! devices take theirs, so a card arriving later has room behind its port. The port's
//! hot-plug MSI reaches the guest through `KVM_SIGNAL_MSI`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::bus::SharedBus;
use devices::pci::bar::{BarAllocator, BarWindows, Window};
use devices::pci::host_bridge::{PciRoot, PciRootError, PortEvents};
use devices::pci::root_port::{
    BridgeWindow, HotplugSignal, RootPort, RootPortError, SlotError, SlotEvent, WindowKind,
};
use devices::pci::{InterruptRouting, MsiMessage};
use devices::vfio::assignment::{self, Assignment, AttachContext, AttachedDevice, DeviceRequest};
use devices::vfio::discovery::{self, BackendChoice, ManagedBinding, Roots};
use devices::vfio::iommu::DeviceSource;
use devices::vfio::naming::DeviceSpec;
use devices::vfio::unplug::unplug_from_port;
use devices::vfio::vm::kvm::SlotPool;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::api::error::ApiError;
use crate::api::hotplug::Hotplug;
use crate::api::response::{DeviceInfo, HostDevice};
use crate::memory::{AddrRange, MemoryLayout};

/// The 32-bit window a port forwards: room for a device's registers and MSI-X pages.
pub const PORT_MMIO32_SIZE: u64 = 16 << 20;
/// The 64-bit prefetchable window a port forwards: the largest BAR a hot-added device
/// can have there (GPUs and NICs with big prefetchable BARs).
pub const PORT_MMIO64_SIZE: u64 = 4 << 30;

/// The BAR windows of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortWindows {
    /// Non-prefetchable memory (32-bit).
    pub mmio32: AddrRange,
    /// Prefetchable memory (64-bit).
    pub mmio64: AddrRange,
}

/// How the BAR windows are shared between the boot devices and the ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowPlan {
    /// What the boot devices' allocator gets of the 32-bit window (its bottom).
    pub boot_mmio32: AddrRange,
    /// What it gets of the 64-bit window (its bottom).
    pub boot_mmio64: AddrRange,
    /// Each port's windows, from the top down.
    pub ports: Vec<PortWindows>,
}

/// The windows could not hold the ports.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugError {
    /// Not enough room in a window.
    #[error(
        "{ports} PCIe root port(s) need {need} MiB of the {window} BAR window, which has {have} MiB; use fewer --pcie-ports"
    )]
    NoRoom {
        /// Ports asked for.
        ports: u8,
        /// Which window.
        window: &'static str,
        /// MiB needed.
        need: u64,
        /// MiB there.
        have: u64,
    },
    /// A port could not be set up.
    #[error("PCIe root port: {0}")]
    Port(#[from] RootPortError),
    /// No slot on bus 0 for a port.
    #[error("PCIe root port: {0}; pass fewer --device or --pcie-ports")]
    Slot(#[from] PciRootError),
    /// A `--device ...,port=N` could not go into its port.
    #[error("--device {given}: {why}")]
    Boot {
        /// The `--device` value.
        given: String,
        /// What went wrong, with the fix.
        why: String,
    },
}

/// Splits the layout's windows: each port's from the top (naturally aligned, so a BAR
/// as large as the window fits it), the rest below for the boot devices.
pub fn plan_windows(layout: &MemoryLayout, ports: u8) -> Result<WindowPlan, HotplugError> {
    let carve = |w: AddrRange, each: u64, window: &'static str| {
        let need = each * u64::from(ports);
        // The ports' block starts at an address aligned to one port's size.
        let top = w.end() & !(each - 1);
        let base = top.checked_sub(need).filter(|b| *b >= w.start);
        match base {
            Some(base) => Ok((
                AddrRange {
                    start: w.start,
                    size: base - w.start,
                },
                (0..u64::from(ports))
                    .map(|i| AddrRange {
                        start: top - (i + 1) * each,
                        size: each,
                    })
                    .collect::<Vec<_>>(),
            )),
            None => Err(HotplugError::NoRoom {
                ports,
                window,
                need: need >> 20,
                have: w.size >> 20,
            }),
        }
    };
    if ports == 0 {
        return Ok(WindowPlan {
            boot_mmio32: layout.mmio32,
            boot_mmio64: layout.mmio64,
            ports: Vec::new(),
        });
    }
    let (boot_mmio32, low) = carve(layout.mmio32, PORT_MMIO32_SIZE, "32-bit")?;
    let (boot_mmio64, high) = carve(layout.mmio64, PORT_MMIO64_SIZE, "64-bit")?;
    Ok(WindowPlan {
        boot_mmio32,
        boot_mmio64,
        ports: low
            .into_iter()
            .zip(high)
            .map(|(mmio32, mmio64)| PortWindows { mmio32, mmio64 })
            .collect(),
    })
}

/// A port's hot-plug interrupt, raised with `KVM_SIGNAL_MSI` (the port's MSI message is
/// the guest's; KVM routes it like any MSI write).
struct KvmMsi(Arc<VmFd>);

impl HotplugSignal for KvmMsi {
    fn signal(&self, msg: MsiMessage) {
        let msi = kvm_msi {
            address_lo: msg.address_lo,
            address_hi: msg.address_hi,
            data: msg.data,
            ..Default::default()
        };
        if let Err(e) = self.0.signal_msi(msi) {
            log::warn!(
                "PCIe root port: KVM_SIGNAL_MSI failed: {e}; the guest misses a hot-plug event"
            );
        }
    }
}

/// The VM's root ports.
pub struct Ports {
    ports: Vec<Arc<Mutex<RootPort>>>,
    windows: Vec<PortWindows>,
    /// Each port's slot on bus 0.
    slots: Vec<u8>,
}

impl Ports {
    /// Puts one root port per planned window on the lowest free slots of bus 0: port `i`
    /// (from 0) gets secondary bus `i + 1`, physical slot number `i + 1` and its windows.
    pub fn create(
        plan: &WindowPlan,
        pci: &Mutex<PciRoot>,
        vm: &Arc<VmFd>,
    ) -> Result<Self, HotplugError> {
        let mut ports = Vec::with_capacity(plan.ports.len());
        let mut slots = Vec::with_capacity(plan.ports.len());
        for (i, w) in plan.ports.iter().enumerate() {
            let n = u8::try_from(i + 1).unwrap_or(u8::MAX);
            let mut port = RootPort::new(n, u16::from(n), Box::new(KvmMsi(vm.clone())))?;
            port.set_bus_numbers(0, n, n)?;
            let window = |r: AddrRange| BridgeWindow {
                base: r.start,
                end: r.end() - 1,
            };
            port.set_window(WindowKind::Memory, Some(window(w.mmio32)))?;
            port.set_window(WindowKind::Prefetchable, Some(window(w.mmio64)))?;
            let port = Arc::new(Mutex::new(port));
            let mut root = pci.lock().unwrap_or_else(|p| p.into_inner());
            let slot = root.free_slot()?;
            root.add_root_port(slot, port.clone())?;
            log::info!(
                "PCIe root port {n} at 00:{slot:02x}.0: bus {n}, windows {:#x}-{:#x} and {:#x}-{:#x}",
                w.mmio32.start,
                w.mmio32.end() - 1,
                w.mmio64.start,
                w.mmio64.end() - 1
            );
            ports.push(port);
            slots.push(slot);
        }
        Ok(Self {
            ports,
            windows: plan.ports.clone(),
            slots,
        })
    }

    /// How many ports the VM has.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether the VM has no port.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Port `i`'s windows.
    pub fn windows(&self, i: usize) -> Option<PortWindows> {
        self.windows.get(i).copied()
    }

    /// Port `i`.
    pub fn port(&self, i: usize) -> Option<&Arc<Mutex<RootPort>>> {
        self.ports.get(i)
    }

    /// Port `i`'s slot on bus 0.
    pub fn slot(&self, i: usize) -> Option<u8> {
        self.slots.get(i).copied()
    }
}

/// Devices plugged into the ports while the guest runs: the VMM's [`Hotplug`] (the
/// API's `vm.add-device` / `vm.remove-device`, on the main thread) and the receiver of
/// the ports' slot events ([`HotplugSlots::on_slot_events`], from the event loop).
///
/// Adding: the device is resolved and checked like a `--device` (and bound when
/// `managed=on`), opened in the VM's IOMMU space (the first device of a VM that had none
/// opens it and maps guest RAM), given BARs in its port's windows, put in the port's
/// slot, and the slot says "card present" (the port's MSI): the guest's pciehp powers
/// the slot, scans it and binds its driver. Removing: the slot's attention button is
/// pressed; pciehp waits 5 s (a second press would cancel), unbinds the driver and
/// powers the slot off, and that power-off is when passvm takes the device out (traps,
/// slots, interrupts, reset, IOMMU space) and gives it back to its driver when it was
/// `managed=on`. A guest that never powers the slot off has the device taken anyway
/// after [`REMOVAL_TIMEOUT`], logged.
pub struct HotplugSlots {
    /// First: the devices go before the IOMMU space they are in.
    plugged: Vec<Plugged>,
    ports: Ports,
    /// When the guest last powered each port's slot off.
    powered_off: Vec<Option<Instant>>,
    /// The event loop's 1 s tick while something waits (shared with [`SlotWatch`]).
    tick: Arc<Mutex<TimerFd>>,
    /// Each port's eventfd for VFIO's request interrupt of the device in its slot: the
    /// port's, so the event loop watches it once, whatever comes and goes.
    requests: Vec<EventFd>,
    space: Arc<Mutex<Option<Assignment>>>,
    hw: PlugContext,
}

/// What a device joining the VM needs of it.
pub struct PlugContext {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// The KVM slots of device BARs (shared with the boot devices).
    pub slots: Arc<SlotPool>,
    /// Port-I/O bus.
    pub pio: Arc<SharedBus>,
    /// MMIO bus.
    pub mmio: Arc<SharedBus>,
    /// The PCI root the ports are on.
    pub pci: Arc<Mutex<PciRoot>>,
    /// The GSI routing owner.
    pub routing: Arc<dyn InterruptRouting>,
    /// The VM's whole BAR windows (where a guest may move a BAR).
    pub windows: BarWindows,
    /// Guest RAM (mapped for the device's DMA).
    pub mem: GuestMemoryMmap,
    /// The VFIO backend choice of the command line.
    pub backend: BackendChoice,
    /// A launcher's `/dev/iommu` descriptor.
    pub iommufd_fd: Option<i32>,
    /// Guest RAM size (discovery's RLIMIT_MEMLOCK check).
    pub mem_size: u64,
}

/// How long a slot stays empty after the guest powered it off before a card may
/// arrive: pciehp ignores the slot's link and presence changes for a second after it
/// powers a slot off (`remove_board`), so a card inserted sooner would go unseen.
pub const SLOT_SETTLE: Duration = Duration::from_secs(2);

/// How long the guest has to let go of a device after the removal request: pciehp's
/// 5 s attention-button delay, then its driver's teardown.
pub const REMOVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The shortest time between two resets of a card by its port's secondary bus reset:
/// Linux waits at least 100 ms for the link after each one it does.
pub const MIN_RESET_INTERVAL: Duration = Duration::from_millis(100);

struct Plugged {
    /// First: the device goes before its descriptor and its binding record.
    attached: AttachedDevice,
    info: DeviceInfo,
    port: usize,
    /// The slot says "card present" (else it waits for [`SLOT_SETTLE`]).
    inserted: bool,
    removing: Option<Instant>,
    /// When the guest's secondary bus reset last reset it.
    last_reset: Option<Instant>,
    _fd: Option<OwnedFd>,
    _managed: Vec<ManagedBinding>,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadDevice(e.to_string())
}

impl HotplugSlots {
    /// The slots of `ports`, whose devices join `space`.
    pub fn new(
        ports: Ports,
        space: Arc<Mutex<Option<Assignment>>>,
        hw: PlugContext,
    ) -> std::io::Result<Self> {
        Ok(Self {
            plugged: Vec::new(),
            requests: (0..ports.len())
                .map(|_| EventFd::new(EFD_NONBLOCK))
                .collect::<Result<_, _>>()?,
            powered_off: vec![None; ports.len()],
            tick: Arc::new(Mutex::new(TimerFd::new()?)),
            ports,
            space,
            hw,
        })
    }

    /// Ticks every second while something waits, else not at all.
    fn retick(&self) {
        let mut tick = self.tick.lock().unwrap_or_else(|p| p.into_inner());
        let r = if self.waiting() {
            tick.reset(Duration::from_secs(1), Some(Duration::from_secs(1)))
        } else {
            tick.clear()
        };
        if let Err(e) = r {
            log::warn!("hot-plug timer: {e}");
        }
    }

    /// Says "card present" in the slots whose card waits for [`SLOT_SETTLE`].
    pub fn insert_due(&mut self) {
        for i in 0..self.plugged.len() {
            let port = self.plugged[i].port;
            if !self.plugged[i].inserted && self.settled(port) {
                self.insert(i);
            }
        }
    }

    fn settled(&self, port: usize) -> bool {
        self.powered_off
            .get(port)
            .copied()
            .flatten()
            .is_none_or(|t| t.elapsed() >= SLOT_SETTLE)
    }

    fn insert(&mut self, i: usize) {
        let p = &mut self.plugged[i];
        p.inserted = true;
        if let Some(port) = self.ports.port(p.port) {
            if let Err(e) = port.lock().unwrap_or_else(|p| p.into_inner()).insert_card() {
                log::warn!("{}: root port {}: {e:?}", p.info.id, p.port + 1);
            }
        }
    }

    fn free_port(&self) -> Option<usize> {
        let pci = self.hw.pci.lock().unwrap_or_else(|p| p.into_inner());
        (0..self.ports.len())
            .find(|i| !pci.port_has_card(*i) && !self.plugged.iter().any(|p| p.port == *i))
    }

    /// The host asks for the device in `port` back (VFIO's request interrupt: its
    /// driver is being unbound from vfio-pci): it is unplugged from the guest, which
    /// lets the host's unbind finish once the slot is off.
    pub fn on_request(&mut self, port: usize) {
        let asked = self
            .requests
            .get(port)
            .and_then(|r| r.read().ok())
            .is_some_and(|n| n > 0);
        let Some(p) = self.plugged.iter().find(|p| p.port == port) else {
            return;
        };
        if !asked || p.removing.is_some() {
            return;
        }
        let id = p.info.id.clone();
        log::warn!("{id}: the host asks for the device back (its driver is being unbound); unplugging it from the guest");
        if let Err(e) = self.remove(&id) {
            log::warn!("{id}: cannot unplug it: {e}");
        }
    }

    /// The slot events of a guest config write (drained by the event loop).
    pub fn on_slot_events(&mut self, events: Vec<(usize, SlotEvent)>) {
        let mut reset: Vec<usize> = Vec::new();
        for (port, event) in events {
            match event {
                SlotEvent::PowerOff => {
                    if let Some(t) = self.powered_off.get_mut(port) {
                        *t = Some(Instant::now());
                    }
                    reset.retain(|p| *p != port);
                    if let Some(i) = self.plugged.iter().position(|p| p.port == port) {
                        self.take_out(i, "the guest powered its slot off");
                    }
                }
                // Several assertions drained at once are one reset of the card.
                SlotEvent::SecondaryBusReset if !reset.contains(&port) => reset.push(port),
                _ => {}
            }
        }
        for port in reset {
            self.reset_card(port);
        }
    }

    /// The guest pulsed Secondary Bus Reset on `port` (Linux does it for a function
    /// without a reset of its own, `reset_method` "bus", alone below its bridge): the
    /// card below is reset as a power-on would, through VFIO (its own reset, else a hot
    /// reset of its host bus when every function there is this VM's), with the model's
    /// interrupts, BAR mappings and config state back at their start. The guest waits
    /// for the link at least 100 ms after deasserting the reset, and restores the
    /// config state it saved; the reset here takes milliseconds.
    ///
    /// At most one reset per [`MIN_RESET_INTERVAL`] a port: a guest pulsing the bit in
    /// a loop would otherwise keep the event loop, which serves the VM's other devices,
    /// in VFIO resets. A pulse sooner is dropped (logged, rate-limited).
    fn reset_card(&mut self, port: usize) {
        let Some(p) = self.plugged.iter_mut().find(|p| p.port == port) else {
            return;
        };
        if p.last_reset
            .is_some_and(|t| t.elapsed() < MIN_RESET_INTERVAL)
        {
            devices::warn_limited!(
                "{}: the guest pulsed root port {}'s secondary bus reset again within {} ms; \
                 not resetting the device again",
                p.info.id,
                port + 1,
                MIN_RESET_INTERVAL.as_millis()
            );
            return;
        }
        p.last_reset = Some(Instant::now());
        log::info!(
            "{}: the guest reset root port {}'s secondary bus; resetting the device",
            p.info.id,
            port + 1
        );
        p.attached
            .device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset();
    }

    /// Takes out devices whose guest did not let go in time.
    pub fn check_timeouts(&mut self) {
        while let Some(i) = self
            .plugged
            .iter()
            .position(|p| p.removing.is_some_and(|t| t.elapsed() >= REMOVAL_TIMEOUT))
        {
            log::warn!(
                "{}: the guest did not release its slot within {} s; removing it anyway",
                self.plugged[i].info.id,
                REMOVAL_TIMEOUT.as_secs()
            );
            self.take_out(i, "forced after the timeout");
        }
    }

    /// Whether a removal waits for the guest, or a card for its slot to settle (the
    /// event loop then ticks).
    pub fn waiting(&self) -> bool {
        self.plugged
            .iter()
            .any(|p| p.removing.is_some() || !p.inserted)
    }

    fn take_out(&mut self, i: usize, why: &str) {
        let Plugged {
            attached,
            info,
            port,
            _fd,
            _managed,
            ..
        } = self.plugged.remove(i);
        let ops = attached.ops.clone();
        // The device model goes in there, quiesced and reset (devices::vfio::unplug);
        // its descriptor closes after it, and a managed=on device goes back to its driver
        // last, as unbinding vfio-pci waits for every descriptor to close.
        let problems = unplug_from_port(
            &self.hw.pci,
            port,
            self.ports.port(port).map(AsRef::as_ref),
            || ops.remove_all_traps(),
            attached,
        );
        drop(ops);
        for e in problems {
            log::warn!("{}: {e}", info.id);
        }
        log::info!("{}: removed from root port {} ({why})", info.id, port + 1);
        drop(_fd);
        drop(_managed);
    }
}

/// How a device comes into its port's slot.
enum Arrival {
    /// Through the API while the guest runs: the slot announces the card.
    Hot,
    /// With the VM (`--device ...,port=N`): the card is in its powered slot before the
    /// guest looks, with the `managed=on` binding the start-up plan made for it.
    Boot(Vec<ManagedBinding>),
}

impl HotplugSlots {
    /// Puts a `--device ...,port=N` device (already planned, checked and bound by the
    /// start-up plan, whose `managed=on` bindings for it are `managed`) in port N's
    /// slot before the guest runs. It then leaves like a hot-added one
    /// (`vm.remove-device`, or the host asking for it back).
    pub fn plug_at_boot(
        &mut self,
        spec: DeviceSpec,
        managed: Vec<ManagedBinding>,
    ) -> Result<DeviceInfo, ApiError> {
        let port = spec
            .port
            .map(|n| usize::from(n) - 1)
            .filter(|i| *i < self.ports.len())
            .ok_or_else(|| ApiError::Internal(format!("{}: no such root port", spec.given)))?;
        self.plug(spec, None, port, Arrival::Boot(managed))
    }

    fn plug(
        &mut self,
        spec: DeviceSpec,
        fd: Option<OwnedFd>,
        port: usize,
        arrival: Arrival,
    ) -> Result<DeviceInfo, ApiError> {
        let port_slot = self
            .ports
            .slot(port)
            .ok_or_else(|| ApiError::Internal("a root port is not on bus 0".into()))?;
        // A device joins the space the VM has: its backend decides.
        let backend = match self
            .space
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(a) if a.space().name() == "group" => BackendChoice::Group,
            Some(_) => BackendChoice::Iommufd,
            None => self.hw.backend,
        };
        let plan = discovery::plan(
            std::slice::from_ref(&spec),
            backend,
            self.hw.iommufd_fd,
            self.hw.mem_size,
            &Roots::host(),
        )
        .map_err(bad)?;
        let (managed, plan, boot) = match arrival {
            Arrival::Hot if plan.needs_binding() => {
                let (managed, plan) = plan.bind_managed().map_err(bad)?;
                (managed, plan, false)
            }
            Arrival::Hot => (Vec::new(), plan, false),
            Arrival::Boot(managed) => (managed, plan, true),
        };
        let d = plan
            .devices
            .first()
            .ok_or_else(|| ApiError::Internal("discovery planned no device".into()))?;
        let id = d.id.clone().unwrap_or_else(|| d.name.clone());
        if self
            .plugged
            .iter()
            .any(|p| p.info.host.sysfs == d.sysfs.display().to_string())
        {
            return Err(ApiError::Conflict {
                message: format!("{} is already in this VM", d.name),
                hint: "remove it first (vm.remove-device)".into(),
            });
        }
        let windows = self
            .ports
            .windows(port)
            .ok_or_else(|| ApiError::Internal("a root port has no windows".into()))?;
        let mut bars = BarAllocator::new(
            Some(Window {
                base: windows.mmio32.start,
                size: windows.mmio32.size,
            }),
            Some(Window {
                base: windows.mmio64.start,
                size: windows.mmio64.size,
            }),
            None,
            windows.mmio64.end(),
        );
        let req = DeviceRequest {
            name: &id,
            source: DeviceSource::from(d),
            rom: assignment::rom_image(&d.rom).map_err(bad)?,
            placement: None,
            port: Some((port, port_slot)),
        };
        let mut ctx = AttachContext {
            vm: self.hw.vm.clone(),
            slots: self.hw.slots.clone(),
            pio: self.hw.pio.clone(),
            mmio: self.hw.mmio.clone(),
            pci: &self.hw.pci,
            routing: self.hw.routing.clone(),
            bars: &mut bars,
            windows: self.hw.windows,
            dma: None,
        };
        let attached = {
            let mut space = self.space.lock().unwrap_or_else(|p| p.into_inner());
            if space.is_none() {
                *space = Some(
                    Assignment::new(&self.hw.vm, plan.backend(), plan.iommufd_fd).map_err(bad)?,
                );
            }
            let Some(a) = space.as_mut() else {
                return Err(ApiError::Internal("no IOMMU space".into()));
            };
            a.attach(&req, &self.hw.mem, &mut ctx, crate::passthrough::intx_gsi)
                .map_err(|e| bad(format!("{}: {e}", d.given_as)))?
        };
        if let Some(fd) = self.requests.get(port) {
            attached
                .device
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .signal_requests_to(fd);
        }
        let secondary = self
            .ports
            .port(port)
            .map(|p| {
                p.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .bus_numbers()
                    .secondary
            })
            .ok_or_else(|| ApiError::Internal("no such root port".into()))?;
        let info = DeviceInfo {
            id: id.clone(),
            host: HostDevice {
                name: d.name.clone(),
                bdf: d.bdf.map(|b| b.to_string()),
                sysfs: d.sysfs.display().to_string(),
            },
            given_as: d.given_as.clone(),
            guest_bdf: format!("0000:{secondary:02x}:00.0"),
            backend: plan.backend().to_string(),
            hotplugged: !boot,
        };
        log::info!(
            "{id}: plugged into root port {} as {}",
            port + 1,
            info.guest_bdf
        );
        self.plugged.push(Plugged {
            attached,
            info: info.clone(),
            port,
            inserted: boot,
            removing: None,
            last_reset: None,
            _fd: fd,
            _managed: managed,
        });
        if boot {
            let placed = self
                .ports
                .port(port)
                .map(|p| p.lock().unwrap_or_else(|p| p.into_inner()).coldplug_card());
            if let Some(Err(e)) = placed {
                let last = self.plugged.len() - 1;
                self.take_out(last, "its slot refused it");
                return Err(ApiError::Internal(format!("root port {}: {e:?}", port + 1)));
            }
        } else if self.settled(port) {
            // Now, or once the slot has settled (SlotWatch's tick).
            let last = self.plugged.len() - 1;
            self.insert(last);
        }
        self.retick();
        Ok(info)
    }
}

impl Hotplug for HotplugSlots {
    fn add(&mut self, spec: DeviceSpec, fd: Option<OwnedFd>) -> Result<DeviceInfo, ApiError> {
        let port = self.free_port().ok_or_else(ApiError::no_hotplug_slot)?;
        self.plug(spec, fd, port, Arrival::Hot)
    }

    fn remove(&mut self, id: &str) -> Result<(), ApiError> {
        let Some(p) = self.plugged.iter_mut().find(|p| p.info.id == id) else {
            return Err(ApiError::UnknownDevice { id: id.to_owned() });
        };
        if p.removing.is_some() {
            return Ok(());
        }
        let port = self
            .ports
            .port(p.port)
            .ok_or_else(|| ApiError::Internal("no such root port".into()))?;
        let pressed = port
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .request_removal();
        match pressed {
            Ok(()) => {
                p.removing = Some(Instant::now());
                self.retick();
                Ok(())
            }
            // The guest never powered the slot on (no pciehp): nothing uses the device.
            Err(SlotError::PoweredOff) => {
                let i = self
                    .plugged
                    .iter()
                    .position(|p| p.info.id == id)
                    .unwrap_or(0);
                self.take_out(i, "its slot was never powered on");
                Ok(())
            }
            Err(e) => Err(ApiError::Internal(format!("root port: {e:?}"))),
        }
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.plugged.iter().map(|p| p.info.clone()).collect()
    }
}

/// The API's [`Hotplug`]: the slots, shared with the event loop's [`SlotWatch`].
pub struct SharedSlots(pub Arc<Mutex<HotplugSlots>>);

impl SharedSlots {
    fn slots(&self) -> std::sync::MutexGuard<'_, HotplugSlots> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Hotplug for SharedSlots {
    fn add(&mut self, spec: DeviceSpec, fd: Option<OwnedFd>) -> Result<DeviceInfo, ApiError> {
        self.slots().add(spec, fd)
    }
    fn remove(&mut self, id: &str) -> Result<(), ApiError> {
        self.slots().remove(id)
    }
    fn devices(&self) -> Vec<DeviceInfo> {
        self.slots().devices()
    }
}

/// The event loop's side of the slots: the ports' slot events (a guest powering a slot
/// off lets its device go) and, while a removal waits for the guest, a 1 s tick for its
/// timeout.
pub struct SlotWatch {
    slots: Arc<Mutex<HotplugSlots>>,
    events: PortEvents,
    tick: Arc<Mutex<TimerFd>>,
    tick_fd: i32,
}

impl SlotWatch {
    /// Watches `events` for `slots`.
    pub fn new(slots: Arc<Mutex<HotplugSlots>>, events: PortEvents) -> Self {
        let tick = slots.lock().unwrap_or_else(|p| p.into_inner()).tick.clone();
        let tick_fd = tick.lock().unwrap_or_else(|p| p.into_inner()).as_raw_fd();
        Self {
            slots,
            events,
            tick,
            tick_fd,
        }
    }
}

/// Event data of a plugged device's request eventfd: this plus its port index.
const REQUEST_DATA: u32 = 1 << 16;

impl MutEventSubscriber for SlotWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.events.ready(), EventSet::IN)) {
            log::error!("cannot watch the root ports' slot events: {e:?}");
        }
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for (i, fd) in slots.requests.iter().enumerate() {
            let data = REQUEST_DATA + u32::try_from(i).unwrap_or(0);
            if let Err(e) = ops.add(Events::with_data(fd, data, EventSet::IN)) {
                log::error!(
                    "cannot watch the host's requests for root port {}: {e:?}",
                    i + 1
                );
            }
        }
        drop(slots);
        if let Err(e) = ops.add(Events::new_raw(self.tick_fd, EventSet::IN)) {
            log::error!("cannot watch the hot-plug timer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if events.data() >= REQUEST_DATA {
            slots.on_request((events.data() - REQUEST_DATA) as usize);
        } else if events.fd() == self.tick_fd {
            let _ = self.tick.lock().unwrap_or_else(|p| p.into_inner()).wait();
            slots.check_timeouts();
            slots.insert_due();
        } else {
            slots.on_slot_events(self.events.drain());
        }
        slots.retick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn ports_take_the_tops_of_the_windows_and_boot_devices_the_rest() {
        let layout = MemoryLayout::new(GIB).unwrap();
        let none = plan_windows(&layout, 0).unwrap();
        assert_eq!(none.boot_mmio32, layout.mmio32);
        assert!(none.ports.is_empty());

        let p = plan_windows(&layout, 2).unwrap();
        assert_eq!(p.ports.len(), 2);
        let top32 = layout.mmio32.end();
        assert_eq!(p.ports[0].mmio32.end(), top32);
        assert_eq!(p.ports[1].mmio32.end(), p.ports[0].mmio32.start);
        assert_eq!(p.boot_mmio32.end(), p.ports[1].mmio32.start);
        assert_eq!(p.boot_mmio32.start, layout.mmio32.start);
        for w in &p.ports {
            assert_eq!(w.mmio32.size, PORT_MMIO32_SIZE);
            assert_eq!(w.mmio64.size, PORT_MMIO64_SIZE);
            assert_eq!(w.mmio64.start % PORT_MMIO64_SIZE, 0, "naturally aligned");
            assert!(w.mmio64.end() <= layout.mmio64.end());
            assert!(w.mmio64.start >= p.boot_mmio64.end());
        }
    }

    #[test]
    fn too_many_ports_for_the_window_is_an_error_that_says_so() {
        let mut layout = MemoryLayout::new(GIB).unwrap();
        layout.mmio64.size = 6 * GIB;
        let e = plan_windows(&layout, 2).unwrap_err();
        assert!(e.to_string().contains("64-bit"), "{e}");
        assert!(e.to_string().contains("fewer --pcie-ports"), "{e}");
    }
}
