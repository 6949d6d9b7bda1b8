//! What the device-model fuzz targets share: the fake PCIe endpoint the unit tests build
//! (devices/src/vfio/device/tests.rs), a fake VM whose buses hold the VMM's guest map
//! (RAM, ECAM, IOAPIC, LAPIC, another device, and everything outside the BAR windows),
//! and the invariants every guest access must leave standing.
//!
//! The VM is the unit tests' `RecordingVm` behind [`StrictVm`]: a device model that asks
//! to remove a trap or a slot it does not hold, or breaks a GSI routing rule, has lost
//! track of its own state, so those answers panic here instead of being logged.

use std::sync::{Arc, Mutex, MutexGuard};

use arbitrary::Arbitrary;
use devices::bus::{BusDevice, Owner};
use devices::pci::bar::{BarAllocator, BarWindows, Window, DEFAULT_MMIO64_LIMIT};
use devices::pci::ecam::EcamWindow;
use devices::pci::host_bridge::{PciRoot, PCI_CONFIG_BASE};
use devices::pci::{InterruptRouting, MsiMessage, RoutingError};
use devices::vfio::device::{DeviceContext, RomImage, VfioPciDevice};
use devices::vfio::testing::{
    FakeDevice, IrqIndex, IrqInfo, MmapArea, RecordingVm, RegionInfo, CONFIG_REGION,
};
use devices::vfio::vm::{AddressSpace, VmOps, VmOpsError};
use vmm_sys_util::eventfd::EventFd;

/// KVM's slot granularity.
pub const PAGE: u64 = 4096;

/// The 32-bit BAR window (as src/memory.rs: from 3 GiB up to ECAM).
pub const MMIO32: Window = Window {
    base: 0xc000_0000,
    size: 0x3000_0000,
};
/// The 64-bit BAR window, above high RAM up to the 39-bit limit.
pub const MMIO64: Window = Window {
    base: 1 << 35,
    size: DEFAULT_MMIO64_LIMIT - (1 << 35),
};
/// The I/O-port BAR window.
pub const IO: Window = Window {
    base: 0xc000,
    size: 0x4000,
};

/// The VMM's own MMIO ranges. "other device" stands for a second passthrough device's
/// BAR inside the window: the fake VM knows one owner besides the device, the VMM.
pub const PLATFORM_MMIO: [(&str, u64, u64); 6] = [
    ("low RAM", 0, 0xc000_0000),
    ("other device's BAR", 0xe000_0000, 0x1_0000),
    ("ECAM", 0xf000_0000, 16 << 20),
    ("IOAPIC", 0xfec0_0000, 0x1000),
    ("LAPIC and MSI window", 0xfee0_0000, 0x10_0000),
    ("high RAM", 0x1_0000_0000, 0x1_0000_0000),
];
/// The VMM's own ports.
pub const PLATFORM_PIO: [(&str, u64, u64); 7] = [
    ("i8042 data", 0x60, 1),
    ("i8042 command", 0x64, 1),
    ("CMOS", 0x70, 2),
    ("UART", 0x3f8, 8),
    ("power", 0x600, 3),
    ("PCI config", PCI_CONFIG_BASE, 8),
    ("other device's I/O BAR", 0xd000, 0x20),
];

/// Every address the guest should not be able to take from the VMM: the named ranges,
/// and what lies outside the windows (`KvmVmOps` refuses traps there; the fake VM refuses
/// them because the VMM holds them).
fn vmm_ranges(space: AddressSpace) -> Vec<(u64, u64)> {
    let (named, windows, limit): (Vec<(u64, u64)>, Vec<Window>, u64) = match space {
        AddressSpace::Mmio => (
            PLATFORM_MMIO.iter().map(|r| (r.1, r.2)).collect(),
            vec![MMIO32, MMIO64],
            u64::MAX,
        ),
        AddressSpace::Pio => (
            PLATFORM_PIO.iter().map(|r| (r.1, r.2)).collect(),
            vec![IO],
            1 << 16,
        ),
    };
    let mut taken: Vec<(u64, u64)> = named.clone();
    taken.extend(windows.iter().map(|w| (w.base, w.size)));
    taken.sort_unstable();
    let mut out = named;
    let mut at = 0u64;
    for (base, len) in taken {
        if base > at {
            out.push((at, base - at));
        }
        at = at.max(base + len);
    }
    if at < limit {
        out.push((at, limit - at));
    }
    out.sort_unstable();
    out
}

/// The VMM side of a device: [`RecordingVm`] with panics where the device model
/// contradicted itself (see the module comment).
pub struct StrictVm(pub Arc<RecordingVm>);

impl VmOps for StrictVm {
    fn add_memslot(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, VmOpsError> {
        self.0.add_memslot(gpa, size, host_addr)
    }
    fn remove_memslot(&self, slot: u32) -> Result<(), VmOpsError> {
        let r = self.0.remove_memslot(slot);
        assert!(r.is_ok(), "removed memslot {slot} it does not hold: {r:?}");
        r
    }
    fn register_trap(&self, space: AddressSpace, base: u64, len: u64) -> Result<(), VmOpsError> {
        self.0.register_trap(space, base, len)
    }
    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError> {
        let r = self.0.unregister_trap(space, base);
        assert!(
            r.is_ok(),
            "removed a trap it does not hold: {space:?} {base:#x}: {r:?}"
        );
        r
    }
}

fn strict<T>(what: &str, r: Result<T, RoutingError>) -> Result<T, RoutingError> {
    if let Err(e) = &r {
        assert!(
            matches!(e, RoutingError::GsiExhausted(_)),
            "{what} broke a routing rule: {e}"
        );
    }
    r
}

impl InterruptRouting for StrictVm {
    fn allocate_gsi(&self) -> Result<u32, RoutingError> {
        strict("allocate_gsi", self.0.allocate_gsi())
    }
    fn free_gsi(&self, gsi: u32) -> Result<(), RoutingError> {
        strict("free_gsi", self.0.free_gsi(gsi))
    }
    fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> Result<(), RoutingError> {
        strict("set_msi_routes", self.0.set_msi_routes(routes))
    }
    fn remove_msi_route(&self, gsi: u32) -> Result<(), RoutingError> {
        strict("remove_msi_route", self.0.remove_msi_route(gsi))
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        strict("register_irqfd", self.0.register_irqfd(fd, gsi))
    }
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), RoutingError> {
        strict(
            "register_irqfd_with_resample",
            self.0.register_irqfd_with_resample(fd, resample, gsi),
        )
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        strict("unregister_irqfd", self.0.unregister_irqfd(fd, gsi))
    }
}

/// VFIO's region and IRQ flags the fixture uses.
const REGION_RW: u32 = 0x3;
const REGION_RW_MMAP: u32 = 0x7;
const IRQ_EVENTFD: u32 = 0x1;
const IRQ_MASKABLE_AUTOMASKED: u32 = 0x6;
const IRQ_NORESIZE: u32 = 0x8;

/// BAR sizes of the default fixture (region index -> bytes).
pub const BAR0_SIZE: u64 = 0x1_0000;
/// The I/O BAR.
pub const BAR2_SIZE: u64 = 0x20;
/// A sub-page BAR: mapped as one page.
pub const BAR3_SIZE: u64 = 0x100;

/// What VFIO reports for BAR0 and BAR3: sizes, region flags and the sparse-mmap list,
/// so that the mmap plan (what is mapped, what traps around the MSI-X pages) and its
/// slots are fuzzed too.
#[derive(Arbitrary, Clone, Debug)]
pub struct BarShape {
    /// BAR0 is `1 << (12 + bar0_log2 % 9)` bytes (4 KiB - 1 MiB).
    pub bar0_log2: u8,
    /// BAR0's region flags: bit 0 read, 1 write, 2 mmap.
    pub bar0_flags: u8,
    /// BAR0's sparse-mmap areas as (offset, size), when VFIO gives a list.
    pub bar0_sparse: Option<Vec<(u32, u32)>>,
    /// BAR3 is `1 << (4 + bar3_log2 % 13)` bytes (16 bytes - 64 KiB).
    pub bar3_log2: u8,
    /// BAR3's region flags.
    pub bar3_flags: u8,
}

impl BarShape {
    /// The unit tests' BARs.
    pub fn default_bars() -> Self {
        Self {
            bar0_log2: 4,
            bar0_flags: REGION_RW_MMAP as u8,
            bar0_sparse: None,
            bar3_log2: 4,
            bar3_flags: REGION_RW_MMAP as u8,
        }
    }
    /// BAR0's size.
    pub fn bar0_size(&self) -> u64 {
        1 << (12 + self.bar0_log2 % 9)
    }
    /// BAR3's size.
    pub fn bar3_size(&self) -> u64 {
        1 << (4 + self.bar3_log2 % 13)
    }
}
/// A BAR VFIO does not let us mmap: it always traps.
pub const BAR4_SIZE: u64 = 0x2000;
/// The expansion ROM.
pub const ROM_SIZE: u64 = 0x8000;

/// Config offsets of the fixture's capabilities.
pub const PM_CAP: usize = 0x40;
/// PMCSR, in the PM capability.
pub const PMCSR: usize = PM_CAP + 4;
/// MSI (64-bit, per-vector masking).
pub const MSI_CAP: usize = 0x50;
/// MSI-X.
pub const MSIX_CAP: usize = 0x70;

/// Where the fixture's MSI-X table and PBA are, how many vectors VFIO offers, and the
/// MSI capability's layout.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub struct MsixShape {
    /// Table entries (the capability's field: 1-2048).
    pub entries: u16,
    /// Vectors VFIO reports for the MSI-X index (0: MSI-X hidden).
    pub hw_vectors: u8,
    /// BIR and offset (in qwords) of the table.
    pub table_bar: u8,
    /// Table offset / 8.
    pub table_qword: u16,
    /// BIR of the PBA.
    pub pba_bar: u8,
    /// PBA offset / 8.
    pub pba_qword: u16,
    /// VFIO cannot grow an enabled MSI-X vector set (`VFIO_IRQ_INFO_NORESIZE`).
    pub noresize: bool,
    /// MSI with a 64-bit address.
    pub msi_64bit: bool,
    /// MSI with per-vector mask and pending registers.
    pub msi_pvm: bool,
    /// MSI's Multiple Message Capable field (log2 of its vectors; 0-7, above 5 reserved).
    pub msi_mmc: u8,
    /// Vectors VFIO reports for the MSI index (0: MSI hidden).
    pub msi_hw: u8,
}

impl MsixShape {
    /// The unit tests' layout: 4 vectors, table at BAR0+0x2000, PBA at BAR0+0x3000.
    pub const DEFAULT: MsixShape = MsixShape {
        entries: 4,
        hw_vectors: 4,
        table_bar: 0,
        table_qword: 0x2000 / 8,
        pba_bar: 0,
        pba_qword: 0x3000 / 8,
        noresize: true,
        msi_64bit: true,
        msi_pvm: true,
        msi_mmc: 0,
        msi_hw: 1,
    };

    /// Table size as the capability encodes it.
    pub fn table_size(&self) -> u16 {
        (self.entries & 0x7ff) + 1
    }
    /// Table offset in its BAR.
    pub fn table_offset(&self) -> u64 {
        u64::from(self.table_qword) * 8
    }
    /// PBA offset in its BAR.
    pub fn pba_offset(&self) -> u64 {
        u64::from(self.pba_qword) * 8
    }
    /// BIR as the capability encodes it (0-7; 6 and 7 name no BAR).
    pub fn table_bir(&self) -> u8 {
        self.table_bar & 7
    }
    /// BIR as the capability encodes it.
    pub fn pba_bir(&self) -> u8 {
        self.pba_bar & 7
    }
    /// The vectors VFIO offers, kept small so that a run stays fast.
    pub fn hw(&self) -> u32 {
        u32::from(self.hw_vectors % 65)
    }
    /// MSI's control word as the device reports it.
    pub fn msi_ctrl(&self) -> u16 {
        (u16::from(self.msi_64bit) << 7)
            | (u16::from(self.msi_pvm) << 8)
            | (u16::from(self.msi_mmc & 7) << 1)
    }
    /// The MSI vectors VFIO offers.
    pub fn msi_vectors(&self) -> u32 {
        u32::from(self.msi_hw % 33)
    }
    /// Offset of MSI's data register in the capability.
    pub fn msi_data_at(&self) -> usize {
        if self.msi_64bit {
            0x0c
        } else {
            0x08
        }
    }
}

fn put32(cfg: &mut [u8], off: usize, v: u32) {
    cfg[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The fixture: a PCIe endpoint with BAR0/1 64-bit prefetchable 64 KiB, BAR2 32 bytes
/// of ports, BAR3 a 256-byte 32-bit BAR, BAR4 an 8 KiB BAR that VFIO does not let us
/// mmap, a 32 KiB ROM; PM at 0x40, MSI at 0x50, MSI-X at
/// 0x70 (both laid out by `msix`), PCIe at 0x90; SR-IOV (hidden) at 0x100 before AER at 0x140.
pub fn fake_device(msix: MsixShape, bars: &BarShape) -> FakeDevice {
    let mut cfg = vec![0u8; 4096];
    put32(&mut cfg, 0x00, 0x1001_1af4);
    put32(&mut cfg, 0x04, 0x0010_0000); // status: capability list
    cfg[0x0e] = 0x80; // multi-function on the host
    put32(&mut cfg, 0x10, 0x0000_000c);
    put32(&mut cfg, 0x18, 0x0000_0001);
    put32(&mut cfg, 0x30, 0xfeb8_0000);
    cfg[0x34] = PM_CAP as u8;
    cfg[0x3d] = 1; // INTA#
    put32(&mut cfg, PM_CAP, 0x0003_5001); // PM, next 0x50, version 3
    put32(&mut cfg, MSI_CAP, u32::from(msix.msi_ctrl()) << 16 | 0x7005); // MSI, next 0x70
    let ctrl = u32::from(msix.table_size() - 1);
    put32(&mut cfg, MSIX_CAP, ctrl << 16 | 0x9011); // MSI-X, next 0x90
    put32(
        &mut cfg,
        MSIX_CAP + 4,
        (msix.table_offset() as u32) | u32::from(msix.table_bir()),
    );
    put32(
        &mut cfg,
        MSIX_CAP + 8,
        (msix.pba_offset() as u32) | u32::from(msix.pba_bir()),
    );
    put32(&mut cfg, 0x90, 0x0002_0010); // PCIe
    put32(&mut cfg, 0x100, 0x1401_0010); // SR-IOV -> 0x140
    put32(&mut cfg, 0x140, 0x0001_0001); // AER, end
    let mut d = FakeDevice::new(cfg);
    let reg = |size, flags, offset| RegionInfo {
        flags,
        size,
        offset,
        ..Default::default()
    };
    let fill = |size: u64, b: u8| vec![b; size as usize];
    // Region offsets in the device fd: BAR0 first (up to 1 MiB), the rest after it.
    let (b0, b3) = (bars.bar0_size(), bars.bar3_size());
    let mut bar0 = reg(b0, u32::from(bars.bar0_flags & 7), 0);
    bar0.sparse_areas = bars.bar0_sparse.as_ref().map(|areas| {
        areas
            .iter()
            .take(8)
            .map(|&(offset, size)| MmapArea {
                offset: u64::from(offset),
                size: u64::from(size),
            })
            .collect()
    });
    d.add_region(0, bar0, fill(b0, 0x5a));
    d.add_region(
        2,
        reg(BAR2_SIZE, REGION_RW, 0x40_0000),
        fill(BAR2_SIZE, 0x11),
    );
    d.add_region(
        3,
        reg(b3, u32::from(bars.bar3_flags & 7), 0x41_0000),
        fill(b3, 0x22),
    );
    d.add_region(
        4,
        reg(BAR4_SIZE, REGION_RW, 0x42_0000),
        fill(BAR4_SIZE, 0x44),
    );
    d.add_region(6, reg(ROM_SIZE, 0x1, 0x43_0000), fill(ROM_SIZE, 0x55));
    d.irqs.insert(
        IrqIndex::Intx,
        IrqInfo {
            flags: IRQ_EVENTFD | IRQ_MASKABLE_AUTOMASKED,
            count: 1,
        },
    );
    if msix.msi_vectors() > 0 {
        d.irqs.insert(
            IrqIndex::Msi,
            IrqInfo {
                flags: IRQ_EVENTFD | IRQ_NORESIZE,
                count: msix.msi_vectors(),
            },
        );
    }
    if msix.hw() > 0 {
        let noresize = if msix.noresize { IRQ_NORESIZE } else { 0 };
        d.irqs.insert(
            IrqIndex::Msix,
            IrqInfo {
                flags: IRQ_EVENTFD | noresize,
                count: msix.hw(),
            },
        );
    }
    d
}

/// The IOAPIC pin the fixture's INTx is wired to.
pub const INTX_GSI: u32 = 10;
/// The guest slot the device sits in on the host bridge.
pub const DEVICE_SLOT: u8 = 3;

/// One device on a fake VM, reachable the ways a guest reaches it.
pub struct Harness {
    /// The fake kernel device.
    pub fake: Arc<FakeDevice>,
    /// The fake VM (its state; the device talks to it through a [`StrictVm`]).
    pub vm: Arc<RecordingVm>,
    /// The device model.
    pub dev: Arc<Mutex<VfioPciDevice>>,
    /// The host bridge with the device in [`DEVICE_SLOT`].
    pub root: Arc<Mutex<PciRoot>>,
    /// The ECAM window in front of `root`.
    pub ecam: EcamWindow,
    /// The device's owner on the fake VM's buses.
    pub owner: Owner,
    /// Where BARs may decode.
    pub windows: BarWindows,
    probes: Vec<(AddressSpace, u64, &'static str)>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Harness {
    /// The fixture with `msix`'s MSI-X and MSI layout, built the way the unit tests
    /// build it.
    pub fn new(msix: MsixShape) -> Self {
        Self::with_bars(msix, &BarShape::default_bars())
    }

    /// [`Harness::new`] with BAR0 and BAR3 as `bars` says.
    pub fn with_bars(msix: MsixShape, bars: &BarShape) -> Self {
        let fake = Arc::new(fake_device(msix, bars));
        let vm = Arc::new(RecordingVm::new());
        let mut probes = Vec::new();
        for space in [AddressSpace::Mmio, AddressSpace::Pio] {
            let named: &[(&'static str, u64, u64)] = match space {
                AddressSpace::Mmio => &PLATFORM_MMIO,
                AddressSpace::Pio => &PLATFORM_PIO,
            };
            for (base, len) in vmm_ranges(space) {
                vm.occupy(space, base, len);
                let name = named
                    .iter()
                    .find(|r| r.1 == base)
                    .map_or("outside the BAR windows", |r| r.0);
                probes.push((space, base, name));
                probes.push((space, base + len - 1, name));
            }
        }
        let strict_vm = Arc::new(StrictVm(vm.clone()));
        let mut alloc =
            BarAllocator::new(Some(MMIO32), Some(MMIO64), Some(IO), DEFAULT_MMIO64_LIMIT);
        let windows = alloc.windows();
        let ctx = DeviceContext {
            vm: strict_vm.clone(),
            routing: strict_vm,
            bars: &mut alloc,
            rom: RomImage::FromDevice,
            multifunction: false,
            intx_gsi: Some(INTX_GSI),
            dma: None,
        };
        let dev = VfioPciDevice::new("fuzz", fake.clone(), ctx).expect("the fixture builds");
        let traps = dev.trapped_ranges();
        vm.insert_traps(&traps);
        let owner = vm
            .owner_at(traps[0].0, traps[0].1)
            .expect("the initial traps are on the buses");
        let dev = Arc::new(Mutex::new(dev));
        let root = Arc::new(Mutex::new(PciRoot::new()));
        lock(&root)
            .add_device(DEVICE_SLOT, dev.clone())
            .expect("a free slot");
        let ecam = EcamWindow::new(root.clone());
        Self {
            fake,
            vm,
            dev,
            root,
            ecam,
            owner,
            windows,
            probes,
        }
    }

    /// The device, locked.
    pub fn dev(&self) -> MutexGuard<'_, VfioPciDevice> {
        lock(&self.dev)
    }

    /// A config read through ECAM (bus 0, [`DEVICE_SLOT`], function 0).
    pub fn ecam_read(&mut self, off: u16, len: usize) -> u32 {
        let mut b = [0u8; 4];
        let len = len.min(4);
        self.ecam.read(0, ecam_offset(off), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    /// A config write through ECAM.
    pub fn ecam_write(&mut self, off: u16, data: &[u8]) {
        self.ecam.write(0, ecam_offset(off), data);
    }

    /// A config read through 0xCF8/0xCFC (the first 256 bytes only: mechanism #1's
    /// register field has 6 bits).
    pub fn port_read(&self, off: u16, len: usize) -> u32 {
        let mut root = lock(&self.root);
        select(&mut root, off);
        let mut b = [0u8; 4];
        let len = len.min(4);
        root.read(PCI_CONFIG_BASE, 4 + u64::from(off & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    /// A config write through 0xCF8/0xCFC.
    pub fn port_write(&self, off: u16, data: &[u8]) {
        let mut root = lock(&self.root);
        select(&mut root, off);
        root.write(PCI_CONFIG_BASE, 4 + u64::from(off & 3), data);
    }

    /// The capability IDs the guest finds walking the list from 0x34 (at most 48: a
    /// loop stops there).
    pub fn capability_ids(&self) -> Vec<u8> {
        let dev = self.dev();
        let mut ids = Vec::new();
        let mut at = (dev.read_config(0x34) & 0xfc) as usize;
        while at != 0 && ids.len() < 48 {
            let head = dev.read_config(at);
            ids.push(head as u8);
            at = ((head >> 8) & 0xfc) as usize;
        }
        ids
    }

    /// A reboot's reset ([`VfioPciDevice::reset`]). The fake's reset clears only the
    /// command register; a real function-level reset also returns the function to D0,
    /// so PMCSR is cleared here too, or the guest would read D3hot from a device that
    /// decodes.
    pub fn reset(&self) {
        self.dev().reset();
        let mut cfg = lock(&self.fake.regions[&CONFIG_REGION].1);
        cfg[PMCSR..PMCSR + 2].fill(0);
    }

    /// Where the guest reads BAR `index` now (its current summary), if implemented.
    pub fn bar_addr(&self, index: usize) -> Option<u64> {
        self.dev()
            .bar_summaries()
            .iter()
            .find(|b| b.index == index)
            .map(|b| b.addr)
    }

    /// What must hold after every guest access:
    /// - every VMM range (platform devices, RAM, the other device, everything outside
    ///   the windows) still belongs to the VMM;
    /// - every range the device says it traps is its own on the bus and inside a window;
    /// - no memory slot while the guest reads memory decode off or D3hot;
    /// - every slot lies inside one of the device's memory BARs at its current address
    ///   (a sub-page BAR's page included), inside a window, starts on the device's own
    ///   trap, ends on none of the VMM's, and is a live host mapping;
    /// - every irqfd on an MSI GSI has a route.
    pub fn check(&self) {
        for &(space, addr, name) in &self.probes {
            assert_eq!(
                self.vm.owner_at(space, addr),
                Some(Owner::VMM),
                "{name} at {space:?} {addr:#x} was taken from the VMM"
            );
        }
        let dev = self.dev();
        for (space, base, len) in dev.trapped_ranges() {
            assert!(
                self.windows.contains(space == AddressSpace::Pio, base, len),
                "trap {space:?} {base:#x}+{len:#x} outside the windows"
            );
            for a in [base, base + len - 1] {
                assert_eq!(
                    self.vm.owner_at(space, a),
                    Some(self.owner),
                    "the device claims {space:?} {base:#x}+{len:#x}, the bus disagrees at {a:#x}"
                );
            }
        }
        let command = dev.read_config(0x04) & 0xffff;
        let d3hot = dev.read_config(PMCSR) & 3 == 3;
        let slots = self.vm.slots();
        if command & 0x2 == 0 || d3hot {
            assert!(
                slots.is_empty(),
                "slots {slots:x?} with command {command:#x}, d3hot {d3hot}"
            );
        }
        let bars = dev.bar_summaries();
        for &(gpa, size, host) in &slots {
            let end = gpa + size;
            assert!(
                bars.iter().any(|b| !b.kind.is_io()
                    && gpa >= b.addr
                    && end <= b.addr.saturating_add(b.size.max(PAGE))),
                "slot {gpa:#x}+{size:#x} outside every memory BAR {bars:x?}"
            );
            assert!(
                self.windows.contains(false, gpa, size),
                "slot {gpa:#x}+{size:#x} outside the windows"
            );
            assert_eq!(self.vm.owner_at(AddressSpace::Mmio, gpa), Some(self.owner));
            assert_ne!(
                self.vm.owner_at(AddressSpace::Mmio, end - 1),
                Some(Owner::VMM),
                "slot {gpa:#x}+{size:#x} runs into the VMM's range"
            );
            // SAFETY: msync only looks the range up in this process's mappings (ENOMEM
            // when part of it is not mapped); nothing is read or written through it.
            let r =
                unsafe { libc::msync(host as *mut libc::c_void, size as usize, libc::MS_ASYNC) };
            assert_eq!(
                r, 0,
                "slot {gpa:#x}+{size:#x}: host {host:#x} is not mapped"
            );
        }
        drop(dev);
        let routes = self.vm.routes();
        for g in self.vm.irqfds() {
            assert!(
                g < 24 || routes.contains_key(&g),
                "irqfd on GSI {g} without a route"
            );
        }
    }

    /// Drops the device the way the VMM does (bus references first) and checks that it
    /// left nothing in the VM: no slot, no irqfd, no route.
    pub fn teardown(self) {
        let Harness {
            fake,
            vm,
            dev,
            root,
            ecam,
            ..
        } = self;
        drop(ecam);
        drop(root);
        let dev = Arc::try_unwrap(dev)
            .ok()
            .expect("the harness holds the last reference");
        drop(dev);
        assert!(vm.slots().is_empty(), "slots left: {:x?}", vm.slots());
        assert!(vm.irqfds().is_empty(), "irqfds left: {:?}", vm.irqfds());
        assert!(vm.routes().is_empty(), "routes left: {:?}", vm.routes());
        assert_eq!(
            fake.config_command() & 0x7,
            0,
            "decode and bus mastering left on in the device"
        );
    }
}

fn ecam_offset(off: u16) -> u64 {
    (u64::from(DEVICE_SLOT) << 15) | u64::from(off & 0xfff)
}

fn select(root: &mut PciRoot, off: u16) {
    let addr = 0x8000_0000u32 | u32::from(DEVICE_SLOT) << 11 | u32::from(off & 0xfc);
    root.write(PCI_CONFIG_BASE, 0, &addr.to_le_bytes());
}

/// A config access width.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Width {
    /// A byte.
    B1,
    /// A word.
    B2,
    /// A dword.
    B4,
}

impl Width {
    /// Bytes.
    pub fn bytes(self) -> usize {
        match self {
            Width::B1 => 1,
            Width::B2 => 2,
            Width::B4 => 4,
        }
    }
}

/// An MMIO or port access width: the ones CPUs make, and any other.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum AccessLen {
    /// 1 byte.
    B1,
    /// 2 bytes.
    B2,
    /// 4 bytes.
    B4,
    /// 8 bytes.
    B8,
    /// 0-16 bytes.
    Odd(u8),
}

impl AccessLen {
    /// Bytes.
    pub fn bytes(self) -> usize {
        match self {
            AccessLen::B1 => 1,
            AccessLen::B2 => 2,
            AccessLen::B4 => 4,
            AccessLen::B8 => 8,
            AccessLen::Odd(n) => usize::from(n % 17),
        }
    }
}

/// Which range a trapped access names as its base (the VMM passes the range's start).
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Base {
    /// BAR summary `i` (modulo their number): where the BAR is programmed now.
    Bar(u8),
    /// Trapped range `i`: where the VMM routes to the device now.
    Trap(u8),
    /// The ROM BAR's address.
    Rom,
    /// Anywhere.
    Raw(u64),
}

impl Base {
    /// The base address this names on `dev` now.
    pub fn resolve(self, dev: &VfioPciDevice) -> u64 {
        match self {
            Base::Bar(i) => {
                let bars = dev.bar_summaries();
                bars.get(usize::from(i) % bars.len().max(1))
                    .map_or(0, |b| b.addr)
            }
            Base::Trap(i) => {
                let traps = dev.trapped_ranges();
                traps
                    .get(usize::from(i) % traps.len().max(1))
                    .map_or(0, |t| t.1)
            }
            Base::Rom => u64::from(dev.read_config(0x30) & !0x7ff),
            Base::Raw(a) => a,
        }
    }
}

/// A trapped access the way a vCPU exit delivers it: read `len` bytes, or write `value`'s
/// low `len` bytes, at `offset` from `base`.
pub fn bar_access(dev: &mut VfioPciDevice, base: u64, offset: u64, len: usize, write: Option<u64>) {
    let mut buf = [0u8; 16];
    match write {
        Some(v) => {
            buf[..8].copy_from_slice(&v.to_le_bytes());
            buf[8..].copy_from_slice(&v.rotate_left(32).to_le_bytes());
            BusDevice::write(dev, base, offset, &buf[..len]);
        }
        None => BusDevice::read(dev, base, offset, &mut buf[..len]),
    }
}
