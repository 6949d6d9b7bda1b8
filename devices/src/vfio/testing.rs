//! Fakes for the unit tests: a VFIO device backed by byte arrays and a memfd, and a VM
//! that records every call and enforces the routing order rules the real one enforces.
//!
//! With the `fuzzing` feature the module is public, for the fuzz targets in fuzz/
//! (docs/reliability.md). They build a fake the way the unit tests do, so the seam's
//! types a fake is made of are re-exported from here (`device_fd` is the crate's own).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::device_fd::{DeviceFdError, HotReset, VfioDeviceOps};
#[cfg(feature = "fuzzing")]
pub use super::device_fd::{IrqIndex, IrqInfo, MmapArea, RegionInfo, CONFIG_REGION};
#[cfg(not(feature = "fuzzing"))]
use super::device_fd::{IrqIndex, IrqInfo, RegionInfo, CONFIG_REGION};
use super::vm::{AddressSpace, VmOps, VmOpsError};
use crate::bus::{Bus, BusDevice, Owner};
use crate::pci::route_table::RouteTable;
use crate::pci::{InterruptRouting, MsiMessage, RoutingError};
use crate::size::PAGE_SIZE;

/// A VM on this machine's `/dev/kvm`, for the tests the build probe lets run (they
/// carry `#[cfg_attr(passvm_no_kvm, ignore = ...)]`).
pub fn kvm_vm() -> kvm_ioctls::VmFd {
    kvm_ioctls::Kvm::new()
        .expect("/dev/kvm (present when built)")
        .create_vm()
        .expect("KVM_CREATE_VM")
}

/// What the fake device was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevCall {
    /// `enable_irq(index, fds)` with this many eventfds.
    Enable(IrqIndex, usize),
    /// `set_irq_vectors(index, start, which fds were given)`.
    SetVectors(IrqIndex, u32, Vec<bool>),
    /// `disable_irq(index)`.
    Disable(IrqIndex),
    /// `unmask_intx()`.
    UnmaskIntx,
    /// `set_intx_unmask_fd(fd)`.
    SetUnmaskFd,
    /// `reset()`.
    Reset,
    /// `hot_reset()`.
    HotReset,
    /// `region_write(index, offset, bytes)`.
    RegionWrite(u32, u64, Vec<u8>),
}

/// A VFIO device: each region is its info and its bytes (reads past them leave the
/// buffer as it was, writes past them are dropped), mmaps come from one memfd.
pub struct FakeDevice {
    /// Region index -> (what `region_info` reports, the region's bytes).
    pub regions: BTreeMap<u32, (RegionInfo, Mutex<Vec<u8>>)>,
    /// What `irq_info` reports per index; `enable_irq` accepts up to `count` fds.
    pub irqs: HashMap<IrqIndex, IrqInfo>,
    /// Every call, in order.
    pub calls: Mutex<Vec<DevCall>>,
    /// The kernel's view of each enabled index: one entry per allocated vector, true
    /// where it has a trigger eventfd (what costs a host IRQ).
    pub host_vectors: Mutex<HashMap<IrqIndex, Vec<bool>>>,
    /// The INTx unmask calls fail as on kernels without them.
    pub unmask_fd_unsupported: bool,
    /// `VFIO_DEVICE_FLAGS_*`: bit 0 (reset) set by default.
    pub flags: u32,
    /// What `hot_reset` answers (a `Done` clears the command register, as a reset).
    pub hot_reset: HotReset,
    /// `reset` fails (the kernel's reset method no longer works).
    pub reset_fails: bool,
    memfd: std::fs::File,
    watched: Mutex<Option<std::sync::Arc<RecordingVm>>>,
    slots_seen: Mutex<Option<usize>>,
}

impl FakeDevice {
    /// A device with the given config space (256 or 4096 bytes).
    pub fn new(config: Vec<u8>) -> Self {
        // SAFETY: memfd_create with a valid NUL-terminated name; the fd is owned by the File.
        let fd = unsafe { libc::memfd_create(c"fakevfio".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh, valid, exclusively owned descriptor.
        let memfd = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut d = Self {
            regions: BTreeMap::new(),
            irqs: HashMap::new(),
            calls: Mutex::new(Vec::new()),
            host_vectors: Mutex::new(HashMap::new()),
            unmask_fd_unsupported: false,
            flags: 1,
            hot_reset: HotReset::Unavailable,
            reset_fails: false,
            memfd,
            watched: Mutex::new(None),
            slots_seen: Mutex::new(None),
        };
        let size = config.len() as u64;
        d.add_region(
            CONFIG_REGION,
            RegionInfo {
                flags: 3,
                size,
                offset: 7 << 24,
                ..Default::default()
            },
            config,
        );
        d
    }

    /// Adds (or replaces) region `index`, growing the memfd to cover its mmap offset.
    pub fn add_region(&mut self, index: u32, info: RegionInfo, data: Vec<u8>) {
        let end = info.offset + info.size.max(data.len() as u64);
        if self.memfd.metadata().unwrap().len() < end {
            self.memfd.set_len(end).unwrap();
        }
        self.regions.insert(index, (info, Mutex::new(data)));
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<DevCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Records, at every region write, how many memory slots `vm` has at that moment.
    pub fn watch_slots(&self, vm: std::sync::Arc<RecordingVm>) {
        *self.watched.lock().unwrap() = Some(vm);
    }

    /// The command register as the device holds it.
    pub fn config_command(&self) -> u16 {
        let cfg = self.regions[&CONFIG_REGION].1.lock().unwrap();
        u16::from_le_bytes([cfg[4], cfg[5]])
    }

    /// How many slots the watched VM had at the last region write.
    pub fn slots_seen_at_last_write(&self) -> Option<usize> {
        *self.slots_seen.lock().unwrap()
    }

    /// How many vectors of `index` have a trigger eventfd in the kernel.
    pub fn host_irqs(&self, index: IrqIndex) -> usize {
        self.host_vectors
            .lock()
            .unwrap()
            .get(&index)
            .map_or(0, |v| v.iter().filter(|t| **t).count())
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.calls.lock().unwrap().clear();
    }

    fn log(&self, c: DevCall) {
        self.calls.lock().unwrap().push(c);
    }
}

impl VfioDeviceOps for FakeDevice {
    fn device_flags(&self) -> u32 {
        self.flags
    }
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(&index).map(|r| r.0.clone())
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        if let Some((_, bytes)) = self.regions.get(&index) {
            let bytes = bytes.lock().unwrap();
            let o = offset as usize;
            if let Some(src) = bytes.get(o..o + data.len()) {
                data.copy_from_slice(src);
            }
        }
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        self.log(DevCall::RegionWrite(index, offset, data.to_vec()));
        if let Some(vm) = self.watched.lock().unwrap().as_ref() {
            *self.slots_seen.lock().unwrap() = Some(vm.slots().len());
        }
        if let Some((_, bytes)) = self.regions.get(&index) {
            let mut bytes = bytes.lock().unwrap();
            let o = offset as usize;
            if let Some(dst) = bytes.get_mut(o..o + data.len()) {
                dst.copy_from_slice(data);
            }
        }
    }
    fn irq_info(&self, index: IrqIndex) -> Option<IrqInfo> {
        self.irqs.get(&index).copied()
    }
    fn enable_irq(&self, index: IrqIndex, fds: &[&EventFd]) -> Result<(), DeviceFdError> {
        self.log(DevCall::Enable(index, fds.len()));
        match self.irqs.get(&index) {
            Some(i) if i.count as usize >= fds.len() && !fds.is_empty() => {
                self.host_vectors
                    .lock()
                    .unwrap()
                    .insert(index, vec![true; fds.len()]);
                Ok(())
            }
            _ => Err(DeviceFdError::Failed {
                op: "enable",
                detail: "bad count".into(),
            }),
        }
    }
    fn set_irq_vectors(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> Result<(), DeviceFdError> {
        self.log(DevCall::SetVectors(
            index,
            start,
            fds.iter().map(Option::is_some).collect(),
        ));
        let einval = |detail: &str| DeviceFdError::Failed {
            op: "set vectors",
            detail: detail.into(),
        };
        let info = self
            .irqs
            .get(&index)
            .ok_or_else(|| einval("no such index"))?;
        let end = start as usize + fds.len();
        if fds.is_empty() || end > info.count as usize {
            return Err(einval("bad range"));
        }
        // Like vfio_pci_set_msi_trigger: the first call enables with `end` vectors; a
        // later one may grow the set only without NORESIZE.
        let mut host = self.host_vectors.lock().unwrap();
        let noresize = info.flags & super::device_fd::VFIO_IRQ_INFO_NORESIZE != 0;
        let v = host.entry(index).or_insert_with(|| vec![false; end]);
        if end > v.len() {
            if noresize {
                return Err(einval("NORESIZE"));
            }
            v.resize(end, false);
        }
        for (i, f) in fds.iter().enumerate() {
            v[start as usize + i] = f.is_some();
        }
        Ok(())
    }
    fn disable_irq(&self, index: IrqIndex) -> Result<(), DeviceFdError> {
        self.log(DevCall::Disable(index));
        self.host_vectors.lock().unwrap().remove(&index);
        Ok(())
    }
    fn unmask_intx(&self) -> Result<(), DeviceFdError> {
        self.log(DevCall::UnmaskIntx);
        if self.unmask_fd_unsupported {
            return Err(DeviceFdError::Failed {
                op: "unmask",
                detail: "ENOTTY".into(),
            });
        }
        Ok(())
    }
    fn set_intx_unmask_fd(&self, _fd: &EventFd) -> Result<(), DeviceFdError> {
        self.log(DevCall::SetUnmaskFd);
        if self.unmask_fd_unsupported {
            return Err(DeviceFdError::Failed {
                op: "unmask fd",
                detail: "ENOTTY".into(),
            });
        }
        Ok(())
    }
    fn reset(&self) -> Result<bool, DeviceFdError> {
        self.log(DevCall::Reset);
        if self.flags & 1 == 0 {
            return Ok(false);
        }
        if self.reset_fails {
            return Err(DeviceFdError::Failed {
                op: "device reset",
                detail: "ENOTTY".into(),
            });
        }
        // Like a function-level reset: decode and bus mastering off.
        if let Some((_, cfg)) = self.regions.get(&CONFIG_REGION) {
            cfg.lock().unwrap()[4..6].fill(0);
        }
        Ok(self.flags & 1 != 0)
    }
    fn hot_reset(&self) -> HotReset {
        self.log(DevCall::HotReset);
        if let (HotReset::Done(_), Some((_, cfg))) =
            (&self.hot_reset, self.regions.get(&CONFIG_REGION))
        {
            cfg.lock().unwrap()[4..6].fill(0);
        }
        self.hot_reset.clone()
    }
    fn mmap_fd(&self) -> RawFd {
        self.memfd.as_raw_fd()
    }
}

/// What the fake VM was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmCall {
    /// `add_memslot` that succeeded.
    AddSlot {
        /// The slot handed out.
        slot: u32,
        /// Guest address.
        gpa: u64,
        /// Length.
        size: u64,
    },
    /// `remove_memslot(slot)` that succeeded.
    RemoveSlot(u32),
    /// `allocate_gsi` gave this GSI.
    AllocGsi(u32),
    /// `free_gsi(gsi)`.
    FreeGsi(u32),
    /// `set_msi_routes`, one entry per route.
    SetRoute(u32, MsiMessage),
    /// `remove_msi_route(gsi)`.
    RemoveRoute(u32),
    /// `register_irqfd(gsi)`.
    Irqfd(u32),
    /// `register_irqfd_with_resample(gsi)`.
    ResampleIrqfd(u32),
    /// `unregister_irqfd(gsi)`.
    UnregisterIrqfd(u32),
    /// `register_trap(space, base, len)` that succeeded.
    Trap(AddressSpace, u64, u64),
    /// `unregister_trap(space, base)` that succeeded.
    Untrap(AddressSpace, u64),
}

#[derive(Default)]
struct VmState {
    calls: Vec<VmCall>,
    next_slot: u32,
    /// The routing rules the VMM's KVM owner runs, so a device model that breaks them
    /// fails here the way it would on KVM.
    routing: RouteTable,
    slots: HashMap<u32, (u64, u64, u64)>,
    /// Trapped ranges on real buses, so overlaps and unknown removals are refused by the
    /// same code as in the VMM.
    pio: Bus,
    mmio: Bus,
    /// The device's owner on the buses (made on first use).
    owner: Option<Owner>,
}

/// What the fake buses route to: nothing reads through them.
struct NoDevice;

impl BusDevice for NoDevice {
    fn read(&mut self, _base: u64, _offset: u64, _data: &mut [u8]) {}
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

/// `KVM_SET_USER_MEMORY_REGION`'s refusals: EINVAL for a size or address that is not
/// page aligned, EEXIST for a range overlapping another slot.
fn check_memslot(
    slots: &HashMap<u32, (u64, u64, u64)>,
    gpa: u64,
    size: u64,
    host: u64,
) -> Result<(), VmOpsError> {
    let refused = |errno| VmOpsError::Kvm {
        op: "KVM_SET_USER_MEMORY_REGION",
        source: vmm_sys_util::errno::Error::new(errno),
    };
    if size == 0 || (gpa | size | host) % PAGE_SIZE != 0 || gpa.checked_add(size).is_none() {
        return Err(refused(libc::EINVAL));
    }
    if slots
        .values()
        .any(|&(g, sz, _)| gpa < g + sz && g < gpa + size)
    {
        return Err(refused(libc::EEXIST));
    }
    Ok(())
}

/// A VM that records every call, keeps its traps on real buses, refuses the memslots
/// KVM refuses and routes interrupts by the VMM's [`RouteTable`].
#[derive(Default)]
pub struct RecordingVm {
    state: Mutex<VmState>,
    /// Every `add_memslot` fails (the slots are exhausted).
    pub fail_add_slot: bool,
}

impl RecordingVm {
    /// A VM with nothing on it.
    pub fn new() -> Self {
        Self::default()
    }
    /// The calls so far.
    pub fn calls(&self) -> Vec<VmCall> {
        self.state.lock().unwrap().calls.clone()
    }
    /// Forgets the calls so far (the state stays).
    pub fn clear(&self) {
        self.state.lock().unwrap().calls.clear();
    }
    /// The MSI routes set now, by GSI.
    pub fn routes(&self) -> HashMap<u32, MsiMessage> {
        let s = self.state.lock().unwrap();
        s.routing
            .msi_routes()
            .iter()
            .map(|(&g, &m)| (g, m))
            .collect()
    }
    /// The GSIs with an irqfd registered now.
    pub fn irqfds(&self) -> HashSet<u32> {
        self.state.lock().unwrap().routing.irqfd_gsis().collect()
    }
    /// What the VMM does once a device exists (`KvmVmOps::insert_traps`): its initial
    /// trapped ranges go on the buses. Not recorded as calls: the device did not ask.
    pub fn insert_traps(&self, ranges: &[(AddressSpace, u64, u64)]) {
        let mut s = self.state.lock().unwrap();
        let owner = s.owner();
        for &(space, base, len) in ranges {
            let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(NoDevice));
            s.bus(space).insert(owner, dev, base, len).unwrap();
        }
    }
    /// What the VMM does when the device leaves (`KvmVmOps::remove_all_traps`): its
    /// ranges come off the buses; returns how many there were.
    pub fn remove_traps(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        let owner = s.owner();
        [AddressSpace::Pio, AddressSpace::Mmio]
            .into_iter()
            .map(|space| s.bus(space).remove_owner(owner))
            .sum()
    }
    /// Puts a range of the VMM's own on a bus (a platform device the guest may aim at).
    pub fn occupy(&self, space: AddressSpace, base: u64, len: u64) {
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(NoDevice));
        self.state
            .lock()
            .unwrap()
            .bus(space)
            .insert(Owner::VMM, dev, base, len)
            .unwrap();
    }
    /// Who holds `addr` on a bus.
    pub fn owner_at(&self, space: AddressSpace, addr: u64) -> Option<Owner> {
        self.state.lock().unwrap().bus(space).owner_at(addr)
    }
    /// Live memory slots as (gpa, size, host address).
    pub fn slots(&self) -> Vec<(u64, u64, u64)> {
        let mut v: Vec<_> = self.state.lock().unwrap().slots.values().copied().collect();
        v.sort();
        v
    }
}

impl VmOps for RecordingVm {
    fn add_memslot(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, VmOpsError> {
        if self.fail_add_slot {
            return Err(VmOpsError::Exhausted("memory slots"));
        }
        let mut s = self.state.lock().unwrap();
        check_memslot(&s.slots, gpa, size, host_addr)?;
        let slot = s.next_slot;
        s.next_slot += 1;
        s.slots.insert(slot, (gpa, size, host_addr));
        s.calls.push(VmCall::AddSlot { slot, gpa, size });
        Ok(slot)
    }
    fn remove_memslot(&self, slot: u32) -> Result<(), VmOpsError> {
        let mut s = self.state.lock().unwrap();
        s.slots
            .remove(&slot)
            .ok_or(VmOpsError::Other("no such slot".into()))?;
        s.calls.push(VmCall::RemoveSlot(slot));
        Ok(())
    }
    fn register_trap(&self, space: AddressSpace, base: u64, len: u64) -> Result<(), VmOpsError> {
        let mut s = self.state.lock().unwrap();
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(NoDevice));
        let owner = s.owner();
        s.bus(space)
            .insert(owner, dev, base, len)
            .map_err(|e| VmOpsError::Refused(e.to_string()))?;
        s.calls.push(VmCall::Trap(space, base, len));
        Ok(())
    }
    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError> {
        let mut s = self.state.lock().unwrap();
        let owner = s.owner();
        s.bus(space)
            .remove(owner, base)
            .map_err(|e| VmOpsError::Other(e.to_string()))?;
        s.calls.push(VmCall::Untrap(space, base));
        Ok(())
    }
}

impl VmState {
    fn owner(&mut self) -> Owner {
        *self.owner.get_or_insert_with(Owner::unique)
    }

    fn bus(&mut self, space: AddressSpace) -> &mut Bus {
        match space {
            AddressSpace::Pio => &mut self.pio,
            AddressSpace::Mmio => &mut self.mmio,
        }
    }
}

impl InterruptRouting for RecordingVm {
    fn allocate_gsi(&self) -> Result<u32, RoutingError> {
        let mut s = self.state.lock().unwrap();
        let g = s.routing.allocate()?;
        s.calls.push(VmCall::AllocGsi(g));
        Ok(g)
    }
    fn free_gsi(&self, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        s.routing.free(gsi)?;
        s.calls.push(VmCall::FreeGsi(gsi));
        Ok(())
    }
    fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        // All or nothing, like the KVM owner: a refused route leaves the table as it was.
        let mut next = s.routing.clone();
        for &(g, m) in routes {
            next.set_msi(g, m)?;
        }
        s.routing = next;
        for &(g, m) in routes {
            s.calls.push(VmCall::SetRoute(g, m));
        }
        Ok(())
    }
    fn remove_msi_route(&self, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        s.routing.remove_msi(gsi)?;
        s.calls.push(VmCall::RemoveRoute(gsi));
        Ok(())
    }
    fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        s.routing.check_irqfd(gsi)?;
        s.routing.irqfd_added(gsi);
        s.calls.push(VmCall::Irqfd(gsi));
        Ok(())
    }
    fn register_irqfd_with_resample(
        &self,
        _fd: &EventFd,
        _r: &EventFd,
        gsi: u32,
    ) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        s.routing.check_resample(gsi)?;
        s.routing.irqfd_added(gsi);
        s.calls.push(VmCall::ResampleIrqfd(gsi));
        Ok(())
    }
    fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        s.routing.irqfd_removed(gsi);
        s.calls.push(VmCall::UnregisterIrqfd(gsi));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_vm_refuses_what_kvm_and_the_buses_refuse() {
        let vm = RecordingVm::new();
        let a = vm.add_memslot(0x10_0000, 0x2000, 0x7000_0000).unwrap();
        for (gpa, size) in [(0x10_1000, 0x1000), (0xf_f000, 0x2000), (0x10_0000, 0x4000)] {
            let e = vm.add_memslot(gpa, size, 0x7100_0000).unwrap_err();
            assert!(e.to_string().contains("File exists"), "{gpa:#x}: {e}");
        }
        for (gpa, size, host) in [
            (0x20_0800, 0x1000, 0),
            (0x20_0000, 0x800, 0),
            (0x20_0000, 0, 0),
        ] {
            let e = vm.add_memslot(gpa, size, host).unwrap_err();
            assert!(
                e.to_string().contains("Invalid argument"),
                "{gpa:#x}+{size:#x}: {e}"
            );
        }
        vm.add_memslot(0x10_2000, 0x1000, 0x7100_0000)
            .expect("adjacent is fine");
        vm.remove_memslot(a).unwrap();
        vm.add_memslot(0x10_0000, 0x1000, 0x7000_0000)
            .expect("a removed slot's range is free again");

        vm.register_trap(AddressSpace::Mmio, 0xd000_0000, 0x1000)
            .unwrap();
        assert!(vm
            .register_trap(AddressSpace::Mmio, 0xd000_0800, 0x1000)
            .is_err());
        vm.register_trap(AddressSpace::Pio, 0xd000_0800, 0x10)
            .expect("another address space");
        assert!(vm.unregister_trap(AddressSpace::Mmio, 0xe000_0000).is_err());
        vm.unregister_trap(AddressSpace::Mmio, 0xd000_0000).unwrap();
    }

    #[test]
    fn the_fake_vm_routes_by_the_vmms_rules() {
        let vm = RecordingVm::new();
        let fd = EventFd::new(0).unwrap();
        let g = vm.allocate_gsi().unwrap();
        assert!(matches!(
            vm.register_irqfd(&fd, g),
            Err(RoutingError::NoRoute(_))
        ));
        vm.set_msi_route(g, MsiMessage::default()).unwrap();
        vm.register_irqfd(&fd, g).unwrap();
        assert!(matches!(
            vm.remove_msi_route(g),
            Err(RoutingError::IrqfdStillRegistered(_))
        ));
        assert!(matches!(
            vm.register_irqfd_with_resample(&fd, &fd, g),
            Err(RoutingError::ResampleNeedsIrqchip(_))
        ));
        vm.register_irqfd_with_resample(&fd, &fd, 10).unwrap();
        assert!(matches!(
            vm.set_msi_route(g + 1, MsiMessage::default()),
            Err(RoutingError::NotAllocated(_))
        ));
    }
}
