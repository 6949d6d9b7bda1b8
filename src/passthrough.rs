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

use devices::pci::bar::{BarAllocator, Window};
use devices::pci::host_bridge::PciRoot;
use devices::pci::host_bridge::PCI_SLOTS;
use devices::pci::InterruptRouting;
use devices::vfio::assignment::{
    self, AssignError, Assignment, AttachContext, AttachedDevice, DeviceRequest, Placement,
};
use devices::vfio::device::VfioPciDevice;
use devices::vfio::discovery::ResolvedDevice;
use devices::vfio::discovery::{self, DiscoveryError, ManagedBinding, Plan, Roots};
use devices::vfio::iommu::{all_cores, DeviceSource, OwnedVfioDevice};
use devices::vfio::vm::kvm::{KvmVmOps, SlotPool};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::boot::mptable::{self, MpTableError, PciIntx, FIRST_PCI_IOAPIC_PIN};
use crate::config::{DmaMapTiming, VmConfig};
use crate::exit::{ExitReason, VmExit};
use crate::memory::{MemoryError, MemoryLayout};
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
    /// `addr=` cannot be honoured.
    #[error("--device {given}: {why}")]
    Placement {
        /// The device as the user named it.
        given: String,
        /// What is wrong and what to do.
        why: String,
    },
    /// More guest slots needed than bus 0 has.
    #[error("the devices need {0} PCI slots; bus 0 has 31: pass fewer devices (functions of one host slot share one)")]
    TooManySlots(usize),
    /// The MP table with the INTx lines.
    #[error("describing the devices' INTx lines to the guest: {0}")]
    MpTable(#[from] MpTableError),
}

/// What [`prepare`] found: the plan (when there are devices) and the `managed=on` guards.
pub struct Prepared {
    plan: Option<Plan>,
    /// Dropping these gives the devices back to their original drivers.
    guards: Vec<ManagedBinding>,
}

impl Prepared {
    /// No passthrough.
    pub fn none() -> Self {
        Self {
            plan: None,
            guards: Vec::new(),
        }
    }

    /// Splits off the guards, which the VM must drop after everything else.
    pub fn take_guards(&mut self) -> Vec<ManagedBinding> {
        std::mem::take(&mut self.guards)
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
    let (guards, p) = if p.needs_binding() {
        p.bind_managed()?
    } else {
        (Vec::new(), p)
    };
    Ok(Prepared {
        plan: Some(p),
        guards,
    })
}

/// The IOAPIC pin of a slot's INTx line.
pub fn intx_gsi(slot: u8) -> u32 {
    u32::from(FIRST_PCI_IOAPIC_PIN) + u32::from(slot) % PCI_INTX_PINS
}

/// Where each planned device goes on bus 0, in plan order.
///
/// Functions of one host slot stay together in one guest slot, with the multifunction
/// bit set, so a GPU and its audio function look as they do on the host. They keep
/// their function numbers when the host's function 0 is among them; otherwise they are
/// renumbered from 0 in host order, because a guest scans a slot only through its
/// function 0. Every other device (and an mdev, which has no host slot) gets function 0
/// of a slot of its own. `addr=SLOT[.FN]` pins a device's slot (and function); the other
/// slots are handed out from 1 (0 is the host bridge), skipping pinned ones, in the
/// order of each group's first `--device`.
fn placements(devices: &[ResolvedDevice]) -> Result<Vec<Placement>, PassthroughSetupError> {
    /// Domain, bus and device of a host function.
    type HostSlot = (u32, u8, u8);
    let host_slot =
        |d: &ResolvedDevice| -> Option<HostSlot> { d.bdf.map(|b| (b.domain, b.bus, b.device)) };
    let bad = |d: &ResolvedDevice, why: String| PassthroughSetupError::Placement {
        given: d.given_as.clone(),
        why,
    };
    // Groups in order of first appearance: (host slot or None, members' indexes).
    let mut groups: Vec<(Option<HostSlot>, Vec<usize>)> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        match host_slot(d).and_then(|k| groups.iter_mut().find(|g| g.0 == Some(k))) {
            Some(g) => g.1.push(i),
            None => groups.push((host_slot(d), vec![i])),
        }
    }
    // The slot each group asks for: every addr= in a group must name the same slot, and
    // no two groups the same one.
    let mut pinned: Vec<Option<u8>> = Vec::with_capacity(groups.len());
    for (_, members) in &groups {
        let mut want: Option<(u8, usize)> = None;
        for &i in members {
            if let Some(a) = devices[i].addr {
                match want {
                    Some((s, first)) if s != a.slot => {
                        return Err(bad(
                            &devices[i],
                            format!(
                                "addr={:02x} puts it in another slot than {} (addr={s:02x}), but both are functions of one host slot and stay together",
                                a.slot, devices[first].given_as
                            ),
                        ))
                    }
                    _ => want = Some((a.slot, i)),
                }
            }
        }
        if let Some((s, i)) = want {
            if pinned.contains(&Some(s)) {
                return Err(bad(
                    &devices[i],
                    format!("addr={s:02x} is taken by another --device; give each slot once"),
                ));
            }
        }
        pinned.push(want.map(|w| w.0));
    }
    let mut out = vec![
        Placement {
            slot: 0,
            function: 0,
            multifunction: false,
        };
        devices.len()
    ];
    let mut next = 1u8;
    for ((_, members), pin) in groups.iter().zip(&pinned) {
        let slot = match pin {
            Some(s) => *s,
            None => {
                while pinned.contains(&Some(next)) {
                    next += 1;
                }
                let s = next;
                next += 1;
                s
            }
        };
        if slot >= PCI_SLOTS {
            return Err(PassthroughSetupError::TooManySlots(groups.len()));
        }
        let function_of = |i: usize| devices[i].bdf.map_or(0, |b| b.function);
        let keep = members.iter().any(|&i| function_of(i) == 0);
        let mut by_host: Vec<usize> = members.clone();
        by_host.sort_by_key(|&i| function_of(i));
        let mut used = [None::<usize>; 8];
        for (k, &i) in by_host.iter().enumerate() {
            let auto = if keep { function_of(i) } else { k as u8 };
            let function = devices[i].addr.and_then(|a| a.function).unwrap_or(auto);
            if let Some(other) = used[usize::from(function)].replace(i) {
                return Err(bad(
                    &devices[i],
                    format!(
                        "function {slot:02x}.{function} is also {}'s; give each function once",
                        devices[other].given_as
                    ),
                ));
            }
            out[i] = Placement {
                slot,
                function,
                multifunction: members.len() > 1,
            };
        }
        if used[0].is_none() {
            return Err(bad(
                &devices[by_host[0]],
                format!(
                    "slot {slot:02x} would have no function 0, and a guest finds a slot's functions through function 0; drop the .FN of addr="
                ),
            ));
        }
    }
    Ok(out)
}

/// The pieces of the VM a device is attached to.
pub struct VmParts<'a> {
    /// The VM (its irqchip exists).
    pub vm: &'a Arc<VmFd>,
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
}

/// The VM's passthrough devices. Drop order is field order: devices, then the IOMMU space.
#[derive(Default)]
pub struct PassthroughVm {
    devices: Vec<AttachedDevice>,
    space: Option<Assignment>,
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
    let mut bars = BarAllocator::new(
        Some(Window {
            base: layout.mmio32.start,
            size: layout.mmio32.size,
        }),
        Some(Window {
            base: layout.mmio64.start,
            size: layout.mmio64.size,
        }),
        Some(IO_WINDOW),
        layout.mmio64.start + layout.mmio64.size,
    );
    let first_slot = u32::try_from(parts.mem.num_regions()).unwrap_or(u32::MAX);
    let routing: Arc<dyn InterruptRouting> = parts.interrupts.clone();
    let mut ctx = AttachContext {
        vm: parts.vm.clone(),
        slots: Arc::new(SlotPool::new(
            first_slot,
            u32::try_from(parts.nr_memslots).unwrap_or(u32::MAX),
        )),
        pio: parts.buses.pio.clone(),
        mmio: parts.buses.mmio.clone(),
        pci: parts.pci,
        routing,
        bars: &mut bars,
        dma: None,
    };
    start_dma_map(&mut space, plan, parts)?;
    let mut out = PassthroughVm {
        devices: Vec::with_capacity(plan.devices.len()),
        space: None,
    };
    let places = placements(&plan.devices)?;
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
        };
        let a = space
            .attach_opened(dev, &req, parts.mem, &mut ctx, intx_gsi)
            .map_err(device_err)?;
        out.devices.push(a);
    }
    out.space = Some(space);
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
            space
                .map_guest_memory_in_background(parts.mem, threads, move |e| {
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

    /// The event-loop hooks, or `None` without devices.
    pub fn subscriber(&self) -> Option<PassthroughEvents> {
        (!self.devices.is_empty()).then(|| PassthroughEvents {
            devices: self
                .devices
                .iter()
                .map(|a| (a.ops.clone(), a.device.clone()))
                .collect(),
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

/// Event-loop hooks of the passthrough devices. Event data: `2 * index` for a device's
/// queued bus changes, `2 * index + 1` for its INTx EOI.
pub struct PassthroughEvents {
    devices: Vec<(Arc<KvmVmOps>, Arc<Mutex<VfioPciDevice>>)>,
}

impl MutEventSubscriber for PassthroughEvents {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, (vm_ops, dev)) in self.devices.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            if let Err(e) = ops.add(Events::with_data(
                vm_ops.pending_event(),
                2 * i,
                EventSet::IN,
            )) {
                log::error!("VFIO: cannot watch a device's bus changes: {e:?}");
            }
            let dev = dev.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(fd) = dev.intx_eoi_fd() {
                log::info!(
                    "{}: INTx EOIs forwarded by passvm (no kernel unmask)",
                    dev.name()
                );
                if let Err(e) = ops.add(Events::with_data_raw(
                    fd.as_raw_fd(),
                    2 * i + 1,
                    EventSet::IN,
                )) {
                    log::error!("{}: cannot watch INTx EOIs: {e:?}", dev.name());
                }
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let (i, eoi) = ((events.data() / 2) as usize, events.data() % 2 == 1);
        let Some((vm_ops, dev)) = self.devices.get(i) else {
            return;
        };
        if eoi {
            // Reads the eventfd (so the level-triggered watch calms down) and unmasks.
            dev.lock()
                .unwrap_or_else(|p| p.into_inner())
                .handle_intx_eoi();
        } else {
            // No device lock is held here, as apply_pending requires.
            vm_ops.apply_pending();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::vfio::discovery::DeviceKind;

    fn device(bdf: Option<&str>) -> ResolvedDevice {
        let name = bdf
            .unwrap_or("6a1c1e39-7b6f-4b7c-9c3f-0f3f3c1a2b4d")
            .to_string();
        ResolvedDevice {
            given_as: name.clone(),
            kind: if bdf.is_some() {
                DeviceKind::Pci
            } else {
                DeviceKind::Mdev
            },
            bdf: bdf.map(|b| b.parse().unwrap()),
            sysfs: format!("/sys/bus/pci/devices/{name}").into(),
            name,
            parent: None,
            mdev_type: None,
            vendor: None,
            device: None,
            class: None,
            driver: None,
            vfio_bound: true,
            group: None,
            group_members: Vec::new(),
            group_node: None,
            cdev: None,
            cdev_absent: None,
            fd: None,
            id: None,
            managed: false,
            rom: Default::default(),
            addr: None,
        }
    }

    fn with_addr(bdf: &str, addr: &str) -> ResolvedDevice {
        let mut d = device(Some(bdf));
        d.addr = Some(addr.parse().unwrap());
        d
    }

    #[test]
    fn addr_pins_slots_and_functions_and_refuses_what_a_guest_could_not_see() {
        let devices = [
            device(Some("0000:03:00.0")),
            with_addr("0000:04:00.0", "01"),
            with_addr("0000:0a:00.1", "1e"),
            device(Some("0000:0a:00.0")),
        ];
        let got: Vec<_> = placements(&devices)
            .unwrap()
            .iter()
            .map(|p| (p.slot, p.function, p.multifunction))
            .collect();
        assert_eq!(
            got,
            [
                (2, 0, false),
                (1, 0, false),
                (0x1e, 1, true),
                (0x1e, 0, true)
            ]
        );

        let e = |devs: &[ResolvedDevice]| placements(devs).unwrap_err().to_string();
        let m = e(&[
            with_addr("0000:03:00.0", "05"),
            with_addr("0000:04:00.0", "05"),
        ]);
        assert!(m.contains("addr=05 is taken"), "{m}");
        let m = e(&[
            with_addr("0000:0a:00.0", "05"),
            with_addr("0000:0a:00.1", "06"),
        ]);
        assert!(m.contains("stay together"), "{m}");
        let m = e(&[with_addr("0000:03:00.0", "05.1")]);
        assert!(m.contains("no function 0"), "{m}");
        let m = e(&[
            with_addr("0000:0a:00.0", "05.1"),
            device(Some("0000:0a:00.1")),
        ]);
        assert!(m.contains("function 05.1 is also"), "{m}");
        // A pinned function 0 moves the host's function 1 nowhere: both stay.
        let ok = placements(&[
            with_addr("0000:0b:00.3", "07.0"),
            device(Some("0000:0b:00.4")),
        ])
        .unwrap();
        assert_eq!((ok[0].slot, ok[0].function, ok[1].function), (7, 0, 1));
    }

    fn places(bdfs: &[Option<&str>]) -> Vec<(u8, u8, bool)> {
        let devices: Vec<_> = bdfs.iter().map(|b| device(*b)).collect();
        placements(&devices)
            .unwrap()
            .iter()
            .map(|p| (p.slot, p.function, p.multifunction))
            .collect()
    }

    #[test]
    fn functions_of_one_host_slot_share_a_guest_slot() {
        // A GPU and its audio function, given in any order, around a NIC.
        assert_eq!(
            places(&[
                Some("0000:0a:00.1"),
                Some("0000:03:00.0"),
                Some("0000:0a:00.0")
            ]),
            [(1, 1, true), (2, 0, false), (1, 0, true)]
        );
        // Without the host's function 0: renumbered from 0 in host order.
        assert_eq!(
            places(&[Some("0000:0b:02.5"), Some("0000:0b:02.3")]),
            [(1, 1, true), (1, 0, true)]
        );
        // The same slot number on another bus or domain is another slot; mdevs have none.
        assert_eq!(
            places(&[Some("0000:0a:00.0"), Some("0001:0a:00.1"), None, None]),
            [(1, 0, false), (2, 0, false), (3, 0, false), (4, 0, false)]
        );
    }

    #[test]
    fn more_slots_than_bus_0_has_is_an_error_naming_the_count() {
        let bdfs: Vec<String> = (0..32).map(|i| format!("0000:{i:02x}:00.0")).collect();
        let devices: Vec<_> = bdfs.iter().map(|b| device(Some(b))).collect();
        let e = placements(&devices).unwrap_err().to_string();
        assert!(e.contains("need 32 PCI slots"), "{e}");
        assert_eq!(placements(&devices[..31]).unwrap().len(), 31);
    }

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
