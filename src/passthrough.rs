//! The VMM side of PCI passthrough: from the `--device` strings to devices on the VM's
//! buses, their event-loop hooks, reset on guest reboot and the teardown order.
//!
//! The device model is `devices::vfio` (docs/passthrough.md); this file only glues it to
//! the VM core, in this order:
//! 1. [`prepare`] (before KVM is touched): `discovery::plan`, its lines on stderr, and the
//!    `managed=on` bindings, whose guards the VM keeps for its whole life;
//! 2. [`attach`] (after the irqchip, guest RAM and the PCI root exist, before the vCPUs):
//!    one IOMMU space and KVM-VFIO device, each device in `--device` order in the lowest
//!    free slot, BARs in the memory layout's windows, INTx on an IOAPIC pin, and the MP
//!    table rewritten with one level-triggered entry per INTx line;
//! 3. [`PassthroughVm::subscriber`] for the event loop: it applies the bus changes a
//!    device queued from inside a guest config write, and forwards guest EOIs of INTx to
//!    devices whose VFIO driver cannot unmask by itself (mdev mtty);
//! 4. at the end: [`PassthroughVm::reset_for_reboot`] when the guest rebooted, then the
//!    devices are dropped (each one resets itself), then the IOMMU space, and last the
//!    `managed=on` guards. The guards must go last: unbinding vfio-pci from a device that
//!    is still open blocks until it is closed, which would hang passvm.
//!
//! The plan goes to stderr, unconditionally, one line per device: the guest's console is
//! stdout, and what a VM was given is worth seeing without raising the log level.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::pci::bar::{BarAllocator, BarWindows, Window};
use devices::pci::host_bridge::PciRoot;
use devices::pci::InterruptRouting;
use devices::vfio::assignment::{
    self, AssignError, Assignment, AttachContext, AttachedDevice, DeviceRequest,
};
use devices::vfio::device::VfioPciDevice;
use devices::vfio::discovery::{self, Backend, DiscoveryError, ManagedBinding, Plan, Roots};
use devices::vfio::iommu::{all_cores, DeviceSource, OwnedVfioDevice};
use devices::vfio::naming::{Bdf, DeviceSpec};
use devices::vfio::vm::kvm::SlotPool;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::boot::mptable::{self, MpTableError, PciIntx, FIRST_PCI_IOAPIC_PIN};
use crate::config::{DmaMapTiming, VmConfig};
use crate::exit::{ExitReason, VmExit};
use crate::memory::{AddrRange, MemoryError, MemoryLayout};
use crate::seccomp::ThreadFilter;
use crate::vcpu::Buses;
use devices::pci::kvm_routing::Interrupts;

/// The I/O-port window for I/O BARs: the top quarter of the port space, as on a PC, clear
/// of every legacy port passvm emulates.
pub const IO_WINDOW: Window = Window {
    base: 0xc000,
    size: 0x4000,
};
/// IOAPIC pins 16-23 carry PCI INTx; slots share them modulo 8 (a shared level line is
/// fine for PCI).
const PCI_INTX_PINS: u32 = 8;

/// Setting up passthrough for a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughSetupError {
    /// The IOMMU space or the KVM-VFIO device.
    #[error("VFIO: {0}")]
    Space(#[source] AssignError),
    /// One device.
    #[error("--device {given}: {source}")]
    Device {
        /// The device as the user named it.
        given: String,
        /// What failed.
        #[source]
        source: AssignError,
    },
    /// The BAR windows (only for a guest size the config check would have refused).
    #[error(transparent)]
    Layout(#[from] MemoryError),
    /// Where the devices go on bus 0.
    #[error(transparent)]
    Placement(#[from] crate::placement::PlacementError),
    /// The MP table with the INTx lines.
    #[error("describing the devices' INTx lines to the guest: {0}")]
    MpTable(#[from] MpTableError),
}

/// What [`prepare`] found: the plan of the devices on bus 0 (when there are any), the
/// `managed=on` guards, and the devices that go behind root ports (`port=N`).
pub struct Prepared {
    plan: Option<Plan>,
    /// Dropping these gives the devices back to their original drivers.
    guards: Vec<ManagedBinding>,
    on_ports: Vec<PortDevice>,
}

/// A `--device ...,port=N`: checked with the others, then plugged into its root port's
/// slot (src/hotplug.rs) once the ports exist.
pub struct PortDevice {
    /// The `--device` value.
    pub spec: DeviceSpec,
    /// Its `managed=on` binding, which then leaves with it.
    pub guards: Vec<ManagedBinding>,
}

impl Prepared {
    /// No passthrough.
    pub fn none() -> Self {
        Self {
            plan: None,
            guards: Vec::new(),
            on_ports: Vec::new(),
        }
    }

    /// Splits off the guards, which the VM must drop after everything else.
    pub fn take_guards(&mut self) -> Vec<ManagedBinding> {
        std::mem::take(&mut self.guards)
    }

    /// Splits off the devices that go behind root ports.
    pub fn take_port_devices(&mut self) -> Vec<PortDevice> {
        std::mem::take(&mut self.on_ports)
    }
}

/// Resolves and checks every `--device`, prints the plan on stderr and binds the
/// `managed=on` devices. The error's [`DiscoveryError::exit_code`] is the exit status.
pub fn prepare(cfg: &VmConfig) -> Result<Prepared, DiscoveryError> {
    if cfg.devices.is_empty() {
        return Ok(Prepared::none());
    }
    let roots = Roots::host();
    let p = discovery::plan(
        &cfg.devices,
        cfg.vfio_backend,
        cfg.iommufd_fd,
        cfg.memory.size,
        &roots,
    )?;
    eprint!("{p}");
    let (mut guards, mut p) = if p.needs_binding() {
        p.bind_managed()?
    } else {
        (Vec::new(), p)
    };
    // The port devices leave the bus-0 plan (resolve gave each exactly one function)
    // and take their bindings with them.
    let mut on_ports = Vec::new();
    for spec in cfg.devices.iter().filter(|s| s.port.is_some()) {
        let bdfs: Vec<_> = p
            .devices
            .iter()
            .filter(|d| d.port == spec.port)
            .filter_map(|d| d.bdf)
            .collect();
        let (theirs, rest): (Vec<_>, Vec<_>) =
            guards.into_iter().partition(|g| bdfs.contains(&g.bdf()));
        guards = rest;
        on_ports.push(PortDevice {
            spec: spec.clone(),
            guards: theirs,
        });
    }
    p.devices.retain(|d| d.port.is_none());
    Ok(Prepared {
        plan: (!p.devices.is_empty()).then_some(p),
        guards,
        on_ports,
    })
}

/// The VM's BAR windows, where a guest may place any BAR (the DSDT's `_CRS`).
pub fn vm_windows(layout: &MemoryLayout) -> BarWindows {
    let window = |r: AddrRange| {
        Some(Window {
            base: r.start,
            size: r.size,
        })
    };
    BarAllocator::new(
        window(layout.mmio32),
        window(layout.mmio64),
        Some(IO_WINDOW),
        layout.mmio64.start + layout.mmio64.size,
    )
    .windows()
}

/// The IOAPIC pin of a slot's INTx line.
pub fn intx_gsi(slot: u8) -> u32 {
    u32::from(FIRST_PCI_IOAPIC_PIN) + u32::from(slot) % PCI_INTX_PINS
}

/// The pieces of the VM a device is attached to.
pub struct VmParts<'a> {
    /// The VM (its irqchip exists).
    pub vm: &'a Arc<VmFd>,
    /// The parts of the 32-bit and 64-bit BAR windows the boot devices are placed in
    /// (the rest is the hot-plug ports', src/hotplug.rs).
    pub boot_windows: (AddrRange, AddrRange),
    /// KVM's memory slot count.
    pub nr_memslots: usize,
    /// The GSI router.
    pub interrupts: &'a Arc<Interrupts>,
    /// The buses.
    pub buses: &'a Buses,
    /// PCI bus 0.
    pub pci: &'a Mutex<PciRoot>,
    /// Guest RAM (RAM slots `0..num_regions`).
    pub mem: &'a GuestMemoryMmap,
    /// The guest-physical map (gives the BAR windows).
    pub layout: &'a MemoryLayout,
    /// vCPU count (the MP table).
    pub vcpus: u8,
    /// When guest RAM is mapped for the devices (resolved: never `Auto`, which would
    /// map before the boot).
    pub dma_map: DmaMapTiming,
    /// The stop latch: a DMA map that fails beside the guest's boot stops the VM.
    pub exit: &'a Arc<VmExit>,
    /// The seccomp filter of the `dma-map` helper, which it installs first thing.
    pub dma_filter: ThreadFilter,
}

/// The VM's passthrough devices. Drop order is field order: devices, then the IOMMU space.
#[derive(Default)]
pub struct PassthroughVm {
    devices: Vec<AttachedDevice>,
    /// Shared with the hot-plug slots (src/hotplug.rs), whose devices join this space.
    space: Arc<Mutex<Option<Assignment>>>,
    /// The KVM memory slots of device BARs, shared with hot-plugged devices.
    slots: Option<Arc<SlotPool>>,
    /// What each device is, for the API's `vm.info`.
    listed: Vec<ListedDevice>,
}

/// A passed-through device as the API's `vm.info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDevice {
    /// Its id: `id=`, else its host name.
    pub id: String,
    /// What `--device` named it as.
    pub given_as: String,
    /// Its host name (sysfs name: a BDF or an mdev's UUID).
    pub host_name: String,
    /// Its host PCI address, if it has one.
    pub host_bdf: Option<Bdf>,
    /// Its sysfs directory.
    pub sysfs: std::path::PathBuf,
    /// Its guest slot on bus 0.
    pub slot: u8,
    /// Its guest function.
    pub function: u8,
    /// The VM's VFIO backend.
    pub backend: Backend,
}

/// The VM's IOMMU space with every planned device opened in it, before guest memory
/// exists: its IOVA ranges bound the guest-physical map ([`Opened::iova_end`]).
pub struct Opened {
    space: Assignment,
    /// In plan order.
    devices: Vec<Arc<OwnedVfioDevice>>,
}

impl Opened {
    /// Where the IOMMU's usable IOVA range above 4 GiB ends, if the kernel says.
    pub fn iova_end(&self) -> Option<u64> {
        self.space.iova_end_above_4g()
    }
}

/// Opens the IOMMU space and every planned device in it (`None` without devices).
pub fn open(prepared: &Prepared, vm: &VmFd) -> Result<Option<Opened>, PassthroughSetupError> {
    let Some(plan) = &prepared.plan else {
        return Ok(None);
    };
    let space = Assignment::new(vm, plan.backend(), plan.iommufd_fd)
        .map_err(PassthroughSetupError::Space)?;
    let mut devices = Vec::with_capacity(plan.devices.len());
    for d in &plan.devices {
        let dev =
            space
                .open(&DeviceSource::from(d))
                .map_err(|source| PassthroughSetupError::Device {
                    given: d.given_as.clone(),
                    source,
                })?;
        devices.push(dev);
    }
    Ok(Some(Opened { space, devices }))
}

/// Attaches every opened device (no-op without devices): guest RAM DMA-mapped, each
/// device placed, its BARs in `parts.layout`'s windows.
pub fn attach(
    prepared: &Prepared,
    opened: Option<Opened>,
    parts: &VmParts<'_>,
) -> Result<PassthroughVm, PassthroughSetupError> {
    let (Some(plan), Some(Opened { mut space, devices })) = (&prepared.plan, opened) else {
        return Ok(PassthroughVm::default());
    };
    let layout = parts.layout;
    let window = |r: AddrRange| {
        Some(Window {
            base: r.start,
            size: r.size,
        })
    };
    // A guest may move a BAR anywhere in the VM's windows; the boot devices are placed
    // in the part the hot-plug ports leave them (src/hotplug.rs).
    let limit = layout.mmio64.start + layout.mmio64.size;
    let windows = vm_windows(layout);
    let mut bars = BarAllocator::new(
        window(parts.boot_windows.0),
        window(parts.boot_windows.1),
        Some(IO_WINDOW),
        limit,
    );
    let first_slot = u32::try_from(parts.mem.num_regions()).unwrap_or(u32::MAX);
    let routing: Arc<dyn InterruptRouting> = parts.interrupts.clone();
    let slots = Arc::new(SlotPool::new(
        first_slot,
        u32::try_from(parts.nr_memslots).unwrap_or(u32::MAX),
    ));
    let mut ctx = AttachContext {
        vm: parts.vm.clone(),
        slots: slots.clone(),
        pio: parts.buses.pio.clone(),
        mmio: parts.buses.mmio.clone(),
        pci: parts.pci,
        routing,
        bars: &mut bars,
        windows,
        dma: None,
    };
    start_dma_map(&mut space, plan, parts)?;
    let mut out = PassthroughVm {
        devices: Vec::with_capacity(plan.devices.len()),
        space: Arc::default(),
        slots: Some(slots),
        listed: Vec::with_capacity(plan.devices.len()),
    };
    let places = crate::placement::placements(&plan.devices)?;
    for ((d, placement), dev) in plan.devices.iter().zip(places).zip(devices) {
        let name = d.id.clone().unwrap_or_else(|| d.name.clone());
        let device_err = |source| PassthroughSetupError::Device {
            given: d.given_as.clone(),
            source,
        };
        let req = DeviceRequest {
            name: &name,
            source: DeviceSource::from(d),
            rom: assignment::rom_image(&d.rom).map_err(device_err)?,
            placement: Some(placement),
            port: None,
        };
        let a = space
            .attach_opened(dev, &req, parts.mem, &mut ctx, intx_gsi)
            .map_err(device_err)?;
        out.listed.push(ListedDevice {
            id: name.clone(),
            given_as: d.given_as.clone(),
            host_name: d.name.clone(),
            host_bdf: d.bdf,
            sysfs: d.sysfs.clone(),
            slot: a.slot,
            function: a.function,
            backend: plan.backend(),
        });
        out.devices.push(a);
    }
    out.space = Arc::new(Mutex::new(Some(space)));
    let intx = out.intx_lines();
    mptable::write(parts.mem, parts.vcpus, &intx)?;
    Ok(out)
}

/// Starts mapping guest RAM into the devices' IOMMU space, now or beside the guest's boot
/// (`dma_map=`). Either way the checks come first, so a VM whose RAM cannot be mapped
/// (IOVA ranges, RLIMIT_MEMLOCK) fails before it starts; a pinning failure in the
/// background stops the running VM with the message it would have had at start-up.
fn start_dma_map(
    space: &mut Assignment,
    plan: &Plan,
    parts: &VmParts<'_>,
) -> Result<(), PassthroughSetupError> {
    // The mapping used to be the first device's step; its errors keep that device's name.
    let given = plan
        .devices
        .first()
        .map_or_else(String::new, |d| d.given_as.clone());
    let device_err = {
        let given = given.clone();
        move |source| PassthroughSetupError::Device { given, source }
    };
    match parts.dma_map {
        DmaMapTiming::BeforeBoot | DmaMapTiming::Auto => {
            space.map_guest_memory(parts.mem).map_err(device_err)?;
        }
        DmaMapTiming::Background => {
            // The guest runs meanwhile: its vCPUs keep their cores.
            let threads = all_cores().saturating_sub(usize::from(parts.vcpus)).max(1);
            let exit = parts.exit.clone();
            let filter = parts.dma_filter.clone();
            let on_start = move || filter.apply().map_err(|e| e.to_string());
            space
                .map_guest_memory_in_background(parts.mem, threads, on_start, move |e| {
                    let message = PassthroughSetupError::Device {
                        given,
                        source: AssignError::Dma(e),
                    }
                    .to_string();
                    exit.request(ExitReason::VmmError(message.clone()));
                    message
                })
                .map_err(device_err)?;
        }
    }
    Ok(())
}

impl PassthroughVm {
    /// The MP table's INTx entries (level-triggered, active-high).
    fn intx_lines(&self) -> Vec<PciIntx> {
        // Functions of one slot may share a pin: one entry per (slot, pin).
        let mut lines: Vec<PciIntx> = Vec::new();
        for a in &self.devices {
            let Some(line) = a.intx.and_then(|(pin, gsi)| PciIntx::new(a.slot, pin, gsi)) else {
                continue;
            };
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        lines
    }

    /// The devices, in attach order, for the API's `vm.info`.
    pub fn listed(&self) -> &[ListedDevice] {
        &self.listed
    }

    /// What a device plugged in later joins: the VM's IOMMU space (`None` inside until
    /// a first device opens one) and the KVM slot pool of device BARs (`None` without
    /// devices at start: the first plugged device makes it).
    pub fn shared(&self) -> (Arc<Mutex<Option<Assignment>>>, Option<Arc<SlotPool>>) {
        (self.space.clone(), self.slots.clone())
    }

    /// The event-loop hooks, or `None` without devices; a device error stops the VM
    /// through `exit`.
    pub fn subscriber(&self, exit: Arc<VmExit>) -> Option<PassthroughEvents> {
        (!self.devices.is_empty()).then(|| PassthroughEvents {
            devices: self.devices.iter().map(|a| a.device.clone()).collect(),
            exit,
        })
    }

    /// The guest rebooted: every device back to its power-on state (interrupts off,
    /// reset). The VM then ends (passvm's reboot policy), so the next VM finds the devices
    /// quiet even if dropping one were to fail.
    pub fn reset_for_reboot(&self) {
        for a in &self.devices {
            a.device.lock().unwrap_or_else(|p| p.into_inner()).reset();
        }
    }
}

/// Event-loop hooks of the passthrough devices: the INTx EOIs passvm forwards itself
/// and the devices' error signals (event data: the device's index, with
/// [`ERROR_EVENT`] for an error). BAR moves need none: they take effect inside the
/// guest's write ([`devices::bus::SharedBus`]).
pub struct PassthroughEvents {
    devices: Vec<Arc<Mutex<VfioPciDevice>>>,
    exit: Arc<VmExit>,
}

/// Event-data bit of a device's error eventfd (below it: the device's index).
const ERROR_EVENT: u32 = 1 << 31;
/// Event-data bit of a device's request eventfd (the host wants it back).
const REQUEST_EVENT: u32 = 1 << 30;

impl MutEventSubscriber for PassthroughEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, dev) in self.devices.iter().enumerate() {
            let Some(i) = u32::try_from(i)
                .ok()
                .filter(|i| i & (ERROR_EVENT | REQUEST_EVENT) == 0)
            else {
                break;
            };
            let dev = dev.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(fd) = dev.error_fd() {
                let data = i | ERROR_EVENT;
                if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), data, EventSet::IN)) {
                    log::error!("{}: cannot watch for device errors: {e:?}", dev.name());
                }
            }
            if let Some(fd) = dev.request_fd() {
                let data = i | REQUEST_EVENT;
                if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), data, EventSet::IN)) {
                    log::error!(
                        "{}: cannot watch the host's requests for it: {e:?}",
                        dev.name()
                    );
                }
            }
            if let Some(fd) = dev.intx_eoi_fd() {
                log::info!(
                    "{}: INTx EOIs forwarded by passvm (no kernel unmask)",
                    dev.name()
                );
                if let Err(e) = ops.add(Events::with_data_raw(fd.as_raw_fd(), i, EventSet::IN)) {
                    log::error!("{}: cannot watch INTx EOIs: {e:?}", dev.name());
                }
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        let Some(dev) = self
            .devices
            .get((data & !(ERROR_EVENT | REQUEST_EVENT)) as usize)
        else {
            return;
        };
        let dev = dev.lock().unwrap_or_else(|p| p.into_inner());
        if data & REQUEST_EVENT != 0 {
            // The kernel repeats the request until the fd closes: say it once in a while.
            if dev.take_request() {
                devices::warn_limited!(
                    "{}: the host asks for the device back (its driver is being unbound), \
                     but a device given with --device cannot leave a running guest; the \
                     host's unbind waits until the VM ends (add devices through the API \
                     with --pcie-ports to be able to give them back)",
                    dev.name()
                );
            }
        } else if data & ERROR_EVENT != 0 {
            if let Some(count) = dev.take_error() {
                log::error!("{}: VFIO signalled a device error (AER)", dev.name());
                self.exit.request(ExitReason::DeviceError {
                    device: dev.name().to_owned(),
                    count,
                });
            }
        } else {
            // Reads the eventfd (so the level-triggered watch calms down) and unmasks.
            dev.handle_intx_eoi();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intx_lines_use_the_pci_ioapic_pins() {
        assert_eq!(intx_gsi(1), 17);
        assert_eq!(intx_gsi(7), 23);
        assert_eq!(intx_gsi(8), 16);
        for slot in 0..32 {
            assert!((16..24).contains(&intx_gsi(slot)));
        }
    }
}
