//! A VM's device assignment: one KVM-VFIO device, one IOMMU space, guest RAM mapped
//! once after the first device, and a [`VfioPciDevice`] per `--device`.
//!
//! Three contexts, from wide to narrow: the VMM's own parts (`VmParts` in the binary),
//! the VM-wide [`AttachContext`] every device is attached with (slot pool, buses, PCI
//! root, GSI router, BAR allocator), and the [`DeviceContext`] one device model is built
//! with (its own VM ops, the router, the BAR allocator, its INTx pin).
//!
//! The VMM's glue, in order:
//! 1. [`Assignment::new`] once the VM and its irqchip exist, with the backend the
//!    discovery step chose;
//! 2. per resolved device: [`Assignment::attach`] with the [`AttachContext`] and the
//!    INTx GSI of a slot; RAM is DMA-mapped right after the first device opens. It puts
//!    the device on the PCI root and its trapped BAR ranges on the buses;
//! 3. poll [`VfioPciDevice::intx_eoi_fd`] and the VM ops' pending-change event if the
//!    attached device returns them;
//! 4. on guest reboot call [`VfioPciDevice::reset`]; at exit drop the devices before this.

use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::VmFd;
use vfio_ioctls::VfioDeviceFd;
use vm_memory::GuestMemoryBackend;

use super::device::rom::MAX_ROM_SIZE;
use super::device::{DeviceContext, DeviceError, RomImage, VfioPciDevice};
use super::device_fd::VfioDeviceOps;
use super::discovery::model::Backend;
use super::discovery::model::ResolvedDevice;
use super::iommu::handle::OwnedVfioDevice;
use super::iommu::iova;
use super::iommu::kvm_vfio::{create_kvm_vfio_device, KvmVfioError};
use super::iommu::{DeviceSource, DmaGate, DmaReport, DmaState, IommuError, IommuSpace};
use super::naming::RomChoice;
use super::vm::kvm::{KvmVmOps, SlotPool};
use super::vm::VmOpsError;
use crate::bus::{BusDevice, SharedBus};
use crate::pci::bar::{BarAllocator, BarWindows};
use crate::pci::host_bridge::{PciRoot, PciRootError};
use crate::pci::InterruptRouting;

/// Assigning a device to the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The KVM-VFIO device.
    #[error(transparent)]
    KvmVfio(#[from] KvmVfioError),
    /// Backend, device open or DMA mapping.
    #[error(transparent)]
    Dma(#[from] IommuError),
    /// The device model.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// No PCI slot.
    #[error(transparent)]
    Slot(#[from] PciRootError),
    /// Buses or memory slots.
    #[error("attaching the device to the VM: {0}")]
    Vm(#[from] VmOpsError),
    /// A `romfile=` that cannot be read.
    #[error("romfile={}: {source}; give a readable ROM image (or drop romfile= to use the device's own)", path.display())]
    RomFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A `romfile=` that no ROM BAR can hold.
    #[error("romfile={}: {len} bytes; a ROM BAR holds 1 byte to 16 MiB", path.display())]
    RomFileSize {
        /// The file.
        path: std::path::PathBuf,
        /// Its length.
        len: u64,
    },
    /// An eventfd.
    #[error("cannot create an eventfd ({0}); raise the open-file limit (ulimit -n)")]
    EventFd(#[source] std::io::Error),
    /// The DMA map's helper thread.
    #[error(
        "cannot start the DMA map thread ({0}); raise the process or thread limit (ulimit -u)"
    )]
    Thread(#[source] std::io::Error),
}

/// The VMM's pieces a device is attached to.
pub struct AttachContext<'a> {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// KVM memory slots for device memory (shared by all devices).
    pub slots: Arc<SlotPool>,
    /// Port-I/O bus.
    pub pio: Arc<SharedBus>,
    /// MMIO bus.
    pub mmio: Arc<SharedBus>,
    /// PCI bus 0.
    pub pci: &'a Mutex<PciRoot>,
    /// The GSI routing owner.
    pub routing: Arc<dyn InterruptRouting>,
    /// Where this device's BARs are placed at start (the boot devices' part of the
    /// VM's windows, or a root port's).
    pub bars: &'a mut BarAllocator,
    /// The VM's whole BAR windows: where a guest may move a BAR ([`BarWindows`]).
    pub windows: BarWindows,
    /// The guest RAM map that the devices' Bus Master Enable waits for ([`DmaGate`]);
    /// [`Assignment`]'s attach calls fill it in.
    pub dma: Option<Arc<DmaGate>>,
}

/// A passthrough device on the VM's buses.
pub struct AttachedDevice {
    /// The device (also held by the PCI root and the buses).
    pub device: Arc<Mutex<VfioPciDevice>>,
    /// Its VM services (its slots and bus ranges).
    pub ops: Arc<KvmVmOps>,
    /// Its slot on bus 0.
    pub slot: u8,
    /// Its function in the slot.
    pub function: u8,
    /// `(interrupt pin 1-4, IOAPIC GSI)` for the MP table, when it has INTx.
    pub intx: Option<(u8, u32)>,
    /// The root port whose slot holds it (hot-plugged), by the PCI root's port index.
    pub port: Option<usize>,
}

/// Where a function goes on the guest's bus 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The slot (1-31; 0 is the host bridge).
    pub slot: u8,
    /// The function (0-7).
    pub function: u8,
    /// Whether the slot holds several functions (the header's multifunction bit).
    pub multifunction: bool,
}

/// One device to attach: its name in the log, where to open it, what its ROM BAR shows
/// and where it goes (`None`: function 0 of the lowest free slot, so slots follow
/// `--device` order and stay stable across runs).
#[derive(Clone, Debug)]
pub struct DeviceRequest<'a> {
    /// The name in passvm's log (the user's `id=`, else the sysfs name).
    pub name: &'a str,
    /// Where to open it from.
    pub source: DeviceSource,
    /// What its expansion ROM BAR shows.
    pub rom: RomImage,
    /// Where it goes on bus 0.
    pub placement: Option<Placement>,
    /// Instead: the slot of this root port (`(port index, the port's slot on bus 0)`),
    /// as device 0 of its secondary bus; its INTx swizzles to the port's slot.
    pub port: Option<(usize, u8)>,
}

/// Where [`attach_device`] puts a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// On bus 0 (`None`: function 0 of the lowest free slot).
    Bus0(Option<Placement>),
    /// In the slot of root port `index`, which sits at `slot` on bus 0.
    Port {
        /// The PCI root's port index.
        index: usize,
        /// The port's own slot on bus 0.
        slot: u8,
    },
}

impl DeviceRequest<'_> {
    /// Where the request says the function goes.
    pub fn target(&self) -> Target {
        match self.port {
            Some((index, slot)) => Target::Port { index, slot },
            None => Target::Bus0(self.placement),
        }
    }
}

/// Puts an opened VFIO device on the VM at `target` (see [`DeviceRequest`]): its
/// BARs, its traps, INTx on `intx_gsi(slot)` (an IOAPIC pin, shared by the functions of
/// a slot; behind a root port, the port's slot: device 0's pins swizzle to themselves),
/// and returns what the event loop and the MP table need.
pub fn attach_device(
    name: &str,
    dev: Arc<dyn VfioDeviceOps>,
    rom: RomImage,
    target: Target,
    ctx: &mut AttachContext<'_>,
    intx_gsi: impl Fn(u8) -> u32,
) -> Result<AttachedDevice, AssignError> {
    let (place, port) = match target {
        Target::Bus0(Some(p)) => (p, None),
        Target::Bus0(None) => (
            Placement {
                slot: ctx
                    .pci
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .free_slot()?,
                function: 0,
                multifunction: false,
            },
            None,
        ),
        Target::Port { index, slot } => (
            Placement {
                slot,
                function: 0,
                multifunction: false,
            },
            Some(index),
        ),
    };
    let (slot, function) = (place.slot, place.function);
    let gsi = intx_gsi(slot);
    let ops = Arc::new(KvmVmOps::new(
        ctx.vm.clone(),
        ctx.slots.clone(),
        &ctx.pio,
        &ctx.mmio,
        ctx.windows,
    ));
    let device_ctx = DeviceContext {
        rom,
        multifunction: place.multifunction,
        vm: ops.clone(),
        routing: ctx.routing.clone(),
        bars: ctx.bars,
        intx_gsi: Some(gsi),
        dma: ctx.dma.clone(),
    };
    let model = VfioPciDevice::new(name, dev, device_ctx)?;
    let ranges = model.trapped_ranges();
    let intx = model.intx_gsi().zip(model.intx_pin()).map(|(g, p)| (p, g));
    let device = Arc::new(Mutex::new(model));
    let as_bus: Arc<Mutex<dyn BusDevice>> = device.clone();
    ops.set_device(&as_bus);
    ops.insert_traps(&ranges)?;
    let placed = {
        let mut pci = ctx.pci.lock().unwrap_or_else(|p| p.into_inner());
        match port {
            Some(index) => pci.insert_card(index, vec![Some(device.clone())]),
            None => pci.add_function(slot, function, device.clone()),
        }
    };
    if let Err(e) = placed {
        // Nothing of the device may stay on the buses.
        ops.remove_all_traps();
        return Err(e.into());
    }
    log::info!(
        "{name}: at PCI {}{}",
        match port {
            Some(index) => format!("root port {} (behind 00:{slot:02x}.0)", index + 1),
            None => format!("00:{slot:02x}.{function}"),
        },
        match intx {
            Some((_, g)) => format!(", INTx on GSI {g}"),
            None => String::new(),
        }
    );
    Ok(AttachedDevice {
        device,
        ops,
        slot,
        function,
        intx,
        port,
    })
}

impl From<&ResolvedDevice> for DeviceSource {
    fn from(d: &ResolvedDevice) -> Self {
        DeviceSource {
            sysfs: d.sysfs.clone(),
            cdev: d.cdev.as_ref().map(|c| c.node.clone()),
            cdev_fd: d.fd,
        }
    }
}

/// The VM-wide assignment state: the KVM-VFIO device, the IOMMU space, the RAM map.
pub struct Assignment {
    space: IommuSpace,
    _kvm_vfio: Arc<VfioDeviceFd>,
    dma: Option<DmaJob>,
}

/// The RAM map: its gate, and the helper thread when it runs beside the guest.
struct DmaJob {
    gate: Arc<DmaGate>,
    helper: Option<JoinHandle<()>>,
}

impl Assignment {
    /// Creates the KVM-VFIO device and opens the backend's IOMMU space.
    pub fn new(
        vm: &VmFd,
        backend: Backend,
        iommufd_fd: Option<RawFd>,
    ) -> Result<Self, AssignError> {
        let kvm_vfio = create_kvm_vfio_device(vm)?;
        let space = match backend {
            Backend::Group => super::iommu::group::open_container(kvm_vfio.clone())?,
            Backend::Iommufd => super::iommu::iommufd::open_ioas(kvm_vfio.clone(), iommufd_fd)?,
        };
        log::info!("VFIO: using the {} backend", space.name());
        Ok(Self {
            space,
            _kvm_vfio: kvm_vfio,
            dma: None,
        })
    }

    /// The IOMMU space (for benchmarks and diagnostics).
    pub fn space(&self) -> &IommuSpace {
        &self.space
    }

    /// What the RAM mapping did, once it is complete.
    pub fn dma_report(&self) -> Option<DmaReport> {
        match self.dma.as_ref()?.gate.state() {
            DmaState::Mapped(r) => Some(r),
            _ => None,
        }
    }

    /// Maps guest RAM now, before the guest runs (once; later calls do nothing). The
    /// devices have to be open: a type1 container gets its IOMMU with the first group.
    pub fn map_guest_memory<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
    ) -> Result<Arc<DmaGate>, AssignError> {
        if let Some(j) = &self.dma {
            return Ok(j.gate.clone());
        }
        let gate = Arc::new(DmaGate::open(self.space.map_guest_memory(mem)?));
        self.dma = Some(DmaJob {
            gate: gate.clone(),
            helper: None,
        });
        Ok(gate)
    }

    /// Checks guest RAM against the IOMMU's ranges and RLIMIT_MEMLOCK now (so a VM that
    /// cannot work still fails before it starts), then pins and maps it on a helper
    /// thread while the guest boots; the devices' Bus Master Enable waits for it through
    /// the returned gate. A failure calls `on_failure`, which stops the VM and returns the
    /// message the gate reports. Once per VM; a second call returns the first gate.
    ///
    /// The RAM is faulted in on `threads` threads first: the VMM leaves the guest's vCPUs
    /// their cores (on a 2-core host with a 1-vCPU guest, two prefault threads slowed the
    /// guest's boot as much as the background map saved).
    ///
    /// `on_start` runs first on the helper thread, before anything else: the VMM installs
    /// the thread's seccomp filter there, which its prefault threads then inherit (this
    /// crate stays free of the filters themselves). An error from it fails the map
    /// through `on_failure`, without mapping anything.
    pub fn map_guest_memory_in_background<M>(
        &mut self,
        mem: &M,
        threads: usize,
        on_start: impl FnOnce() -> Result<(), String> + Send + 'static,
        on_failure: impl FnOnce(IommuError) -> String + Send + 'static,
    ) -> Result<Arc<DmaGate>, AssignError>
    where
        M: GuestMemoryBackend + Clone + Send + 'static,
    {
        if let Some(j) = &self.dma {
            return Ok(j.gate.clone());
        }
        let ram = self.space.check_guest_memory(mem)?;
        let gate = Arc::new(DmaGate::pending(ram.bytes()));
        let (space, keep, g) = (self.space.clone(), mem.clone(), gate.clone());
        let helper = crate::thread::spawn_without_signals("dma-map", move || {
            if let Err(e) = on_start() {
                drop(keep);
                g.finish(Err(on_failure(IommuError::HelperStart(e))));
                return;
            }
            // SAFETY: `keep` is a clone of the guest memory `ram` was read from; it holds
            // the regions' mappings until this thread ends, and the regions are never
            // unmapped while any clone lives. After this thread, the VM's own memory
            // object keeps them for as long as the IOMMU space exists.
            let outcome = unsafe { space.map_ram(&ram, Some(&g), threads) };
            drop(keep);
            g.finish(match outcome {
                Ok(report) => Ok(report),
                Err(IommuError::Cancelled) => Err(IommuError::Cancelled.to_string()),
                Err(e) => Err(on_failure(e)),
            });
        })
        .map_err(AssignError::Thread)?;
        self.dma = Some(DmaJob {
            gate: gate.clone(),
            helper: Some(helper),
        });
        Ok(gate)
    }

    /// Opens a device in the VM's IOMMU space, before anything is attached: the VMM opens
    /// them all first, as the space's IOVA ranges (which bound the guest-physical map)
    /// are only known once a device is in it.
    pub fn open(&self, src: &DeviceSource) -> Result<Arc<OwnedVfioDevice>, AssignError> {
        Ok(Arc::new(self.space.open_device(src)?))
    }

    /// The end of the IOMMU's usable IOVA range that holds 4 GiB, where RAM above the
    /// 32-bit hole starts (guest RAM is mapped IOVA = GPA); 4 GiB when no range holds it,
    /// `None` when the kernel does not say (the RAM map checks again then).
    pub fn iova_end_above_4g(&self) -> Option<u64> {
        match self.space.iova_ranges() {
            Ok(ranges) => iova::end_above_4g(&ranges),
            Err(e) => {
                log::warn!("VFIO: cannot read the IOMMU's IOVA ranges ({e})");
                None
            }
        }
    }

    /// Attaches the opened `dev` ([`attach_device`]), mapping guest RAM first if no
    /// mapping was started ([`Assignment::map_guest_memory`]).
    pub fn attach_opened<M: GuestMemoryBackend>(
        &mut self,
        dev: Arc<OwnedVfioDevice>,
        req: &DeviceRequest<'_>,
        mem: &M,
        ctx: &mut AttachContext<'_>,
        intx_gsi: impl Fn(u8) -> u32,
    ) -> Result<AttachedDevice, AssignError> {
        ctx.dma = Some(self.map_guest_memory(mem)?);
        attach_device(req.name, dev, req.rom.clone(), req.target(), ctx, intx_gsi)
    }

    /// Opens the device, maps guest RAM if no mapping was started, and attaches it
    /// ([`attach_device`]).
    pub fn attach<M: GuestMemoryBackend>(
        &mut self,
        req: &DeviceRequest<'_>,
        mem: &M,
        ctx: &mut AttachContext<'_>,
        intx_gsi: impl Fn(u8) -> u32,
    ) -> Result<AttachedDevice, AssignError> {
        let dev = Arc::new(self.space.open_device(&req.source)?);
        ctx.dma = Some(self.map_guest_memory(mem)?);
        attach_device(req.name, dev, req.rom.clone(), req.target(), ctx, intx_gsi)
    }
}

impl Drop for Assignment {
    /// A mapping still running is cancelled and waited for: it must not outlive the VM.
    fn drop(&mut self) {
        if let Some(DmaJob {
            gate,
            helper: Some(helper),
        }) = self.dma.take()
        {
            gate.cancel();
            if helper.join().is_err() {
                log::error!("VFIO: the DMA map thread panicked (a passvm bug)");
            }
        }
    }
}

/// What `choice` puts behind the ROM BAR: a `romfile=` image is read here, once.
pub fn rom_image(choice: &RomChoice) -> Result<RomImage, AssignError> {
    Ok(match choice {
        RomChoice::Device => RomImage::FromDevice,
        RomChoice::Off => RomImage::Hidden,
        RomChoice::File(path) => {
            let bytes = std::fs::read(path).map_err(|source| AssignError::RomFile {
                path: path.clone(),
                source,
            })?;
            if bytes.is_empty() || bytes.len() as u64 > MAX_ROM_SIZE {
                return Err(AssignError::RomFileSize {
                    path: path.clone(),
                    len: bytes.len() as u64,
                });
            }
            RomImage::Bytes(bytes.into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn each_backend_opens_or_fails_with_a_fix() {
        let vm = crate::vfio::testing::kvm_vm();
        // Each backend either opens (a VFIO host) or says how to get it.
        match Assignment::new(&vm, Backend::Group, None) {
            Ok(_) => assert!(std::path::Path::new("/dev/vfio/vfio").exists()),
            Err(e) => assert!(e.to_string().contains("load the vfio"), "{e}"),
        }
        match Assignment::new(&vm, Backend::Iommufd, None) {
            Ok(_) => assert!(std::path::Path::new("/dev/iommu").exists()),
            Err(e) => assert!(e.to_string().contains("CONFIG_IOMMUFD"), "{e}"),
        }
    }
}

#[cfg(test)]
mod attach_tests {
    use super::*;
    use crate::pci::bar::{Window, DEFAULT_MMIO64_LIMIT};
    use crate::vfio::device_fd::{IrqIndex, IrqInfo, RegionInfo};
    use crate::vfio::testing::{FakeDevice, RecordingVm};

    use crate::bus::Owner;

    fn cf8(pio: &SharedBus, slot: u8, reg: u8) {
        let addr = 0x8000_0000u32 | (u32::from(slot) << 11) | u32::from(reg);
        assert!(pio.write(0xcf8, &addr.to_le_bytes()));
    }

    /// A guest's view through the real host bridge: config cycles on 0xCF8/0xCFC, the
    /// BAR moved and enabled by config writes dispatched through the bus (as on a vCPU),
    /// the trap moved at once; a move over the VMM's own ports refused.
    #[test]
    #[cfg_attr(
        passvm_no_kvm,
        ignore = "needs /dev/kvm, which this machine lacked when the tests were built"
    )]
    fn config_cycles_through_the_host_bridge_reach_the_device() {
        let vm = Arc::new(crate::vfio::testing::kvm_vm());
        let mut cfg = vec![0u8; 256];
        cfg[0..4].copy_from_slice(&0x5678_1234u32.to_le_bytes());
        cfg[0x10..0x14].copy_from_slice(&1u32.to_le_bytes()); // BAR0: I/O
        cfg[0x3d] = 1;
        let mut f = FakeDevice::new(cfg);
        let r = RegionInfo {
            flags: 3,
            size: 8,
            offset: 0x1000,
            ..Default::default()
        };
        f.add_region(0, r, vec![0x33; 8]);
        f.irqs
            .insert(IrqIndex::Intx, IrqInfo { flags: 7, count: 1 });
        let pci = Arc::new(Mutex::new(PciRoot::new()));
        let pio = Arc::new(SharedBus::new());
        pio.insert(Owner::VMM, pci.clone(), 0xcf8, 8).unwrap();
        let mut bars = BarAllocator::new(
            Some(Window {
                base: 0xe000_0000,
                size: 0x100_0000,
            }),
            None,
            Some(Window {
                base: 0xc000,
                size: 0x4000,
            }),
            DEFAULT_MMIO64_LIMIT,
        );
        let mut ctx = AttachContext {
            vm,
            slots: Arc::new(SlotPool::new(10, 20)),
            pio: pio.clone(),
            mmio: Arc::new(SharedBus::new()),
            pci: &pci,
            routing: Arc::new(RecordingVm::new()),
            windows: bars.windows(),
            bars: &mut bars,
            dma: None,
        };
        let a = attach_device(
            "mtty-like",
            Arc::new(f),
            RomImage::FromDevice,
            Target::Bus0(None),
            &mut ctx,
            |slot| 16 + u32::from(slot % 8),
        )
        .unwrap();
        assert_eq!(a.slot, 1, "slot 0 is the host bridge");
        assert_eq!(a.intx, Some((1, 17)));

        let mut b = [0u8; 4];
        cf8(&pio, 1, 0);
        assert!(pio.read(0xcfc, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0x5678_1234);
        // The guest moves the I/O BAR and enables I/O decode.
        cf8(&pio, 1, 0x10);
        assert!(pio.write(0xcfc, &0xd001u32.to_le_bytes()));
        cf8(&pio, 1, 0x04);
        assert!(pio.write(0xcfc, &[0x01, 0x00]));
        assert!(pio.read(0xd000, &mut b), "moved at once");
        assert_eq!(b, [0x33; 4], "I/O BAR through the bus into the VFIO region");
        assert!(!pio.read(0xc000, &mut b[..1]), "old range gone");
        // Over the config ports themselves: refused; they keep working and the BAR
        // reaches nothing until the guest moves it into its window again.
        cf8(&pio, 1, 0x10);
        assert!(pio.write(0xcfc, &0xcf9u32.to_le_bytes()));
        assert_eq!(pio.owner_at(0xcf8), Some(Owner::VMM));
        assert!(!pio.read(0xd000, &mut b[..1]));
        cf8(&pio, 1, 0);
        assert!(pio.read(0xcfc, &mut b));
        assert_eq!(
            u32::from_le_bytes(b),
            0x5678_1234,
            "config cycles still work"
        );
        cf8(&pio, 1, 0x10);
        assert!(pio.write(0xcfc, &0xd001u32.to_le_bytes()));
        assert!(pio.read(0xd000, &mut b));
        assert_eq!(b, [0x33; 4], "back in its window");
    }
}
