//! Fakes for the unit tests: a VFIO device backed by byte arrays and a memfd, and a VM
//! that records every call and enforces the routing order rules the real one enforces.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::device_fd::{
    DeviceFdError, IrqIndex, IrqInfo, RegionInfo, VfioDeviceOps, CONFIG_REGION,
};
use super::vm::{AddressSpace, VmOps, VmOpsError};
use crate::pci::{InterruptRouting, MsiMessage, RoutingError};

/// What the fake device was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevCall {
    Enable(IrqIndex, usize),
    Disable(IrqIndex),
    UnmaskIntx,
    SetUnmaskFd,
    Reset,
    RegionWrite(u32, u64, Vec<u8>),
}

pub struct FakeDevice {
    pub regions: BTreeMap<u32, (RegionInfo, Mutex<Vec<u8>>)>,
    pub irqs: HashMap<IrqIndex, IrqInfo>,
    pub calls: Mutex<Vec<DevCall>>,
    pub unmask_fd_unsupported: bool,
    pub flags: u32,
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
            unmask_fd_unsupported: false,
            flags: 1,
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

    pub fn add_region(&mut self, index: u32, info: RegionInfo, data: Vec<u8>) {
        let end = info.offset + info.size.max(data.len() as u64);
        if self.memfd.metadata().unwrap().len() < end {
            self.memfd.set_len(end).unwrap();
        }
        self.regions.insert(index, (info, Mutex::new(data)));
    }

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

    pub fn slots_seen_at_last_write(&self) -> Option<usize> {
        *self.slots_seen.lock().unwrap()
    }

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
            Some(i) if i.count as usize >= fds.len() && !fds.is_empty() => Ok(()),
            _ => Err(DeviceFdError::Failed {
                op: "enable",
                detail: "bad count".into(),
            }),
        }
    }
    fn disable_irq(&self, index: IrqIndex) -> Result<(), DeviceFdError> {
        self.log(DevCall::Disable(index));
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
        // Like a function-level reset: decode and bus mastering off.
        if let Some((_, cfg)) = self.regions.get(&CONFIG_REGION) {
            cfg.lock().unwrap()[4..6].fill(0);
        }
        Ok(self.flags & 1 != 0)
    }
    fn mmap_fd(&self) -> RawFd {
        self.memfd.as_raw_fd()
    }
}

/// What the fake VM was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmCall {
    AddSlot { slot: u32, gpa: u64, size: u64 },
    RemoveSlot(u32),
    AllocGsi(u32),
    FreeGsi(u32),
    SetRoute(u32, MsiMessage),
    RemoveRoute(u32),
    Irqfd(u32),
    ResampleIrqfd(u32),
    UnregisterIrqfd(u32),
    Trap(AddressSpace, u64, u64),
    Untrap(AddressSpace, u64),
}

#[derive(Default)]
struct VmState {
    calls: Vec<VmCall>,
    next_slot: u32,
    next_gsi: u32,
    routes: HashMap<u32, MsiMessage>,
    irqfds: HashSet<u32>,
    slots: HashMap<u32, (u64, u64, u64)>,
}

#[derive(Default)]
pub struct RecordingVm {
    state: Mutex<VmState>,
    pub fail_add_slot: bool,
}

impl RecordingVm {
    pub fn new() -> Self {
        let vm = Self::default();
        vm.state.lock().unwrap().next_gsi = 24;
        vm
    }
    pub fn calls(&self) -> Vec<VmCall> {
        self.state.lock().unwrap().calls.clone()
    }
    pub fn clear(&self) {
        self.state.lock().unwrap().calls.clear();
    }
    pub fn routes(&self) -> HashMap<u32, MsiMessage> {
        self.state.lock().unwrap().routes.clone()
    }
    pub fn irqfds(&self) -> HashSet<u32> {
        self.state.lock().unwrap().irqfds.clone()
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
        self.state
            .lock()
            .unwrap()
            .calls
            .push(VmCall::Trap(space, base, len));
        Ok(())
    }
    fn unregister_trap(&self, space: AddressSpace, base: u64) -> Result<(), VmOpsError> {
        self.state
            .lock()
            .unwrap()
            .calls
            .push(VmCall::Untrap(space, base));
        Ok(())
    }
}

impl InterruptRouting for RecordingVm {
    fn allocate_gsi(&self) -> Result<u32, RoutingError> {
        let mut s = self.state.lock().unwrap();
        let g = s.next_gsi;
        s.next_gsi += 1;
        s.calls.push(VmCall::AllocGsi(g));
        Ok(g)
    }
    fn free_gsi(&self, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        if s.routes.contains_key(&gsi) {
            return Err(RoutingError::NotAllocated(gsi));
        }
        s.calls.push(VmCall::FreeGsi(gsi));
        Ok(())
    }
    fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        for (g, m) in routes {
            s.routes.insert(*g, *m);
            s.calls.push(VmCall::SetRoute(*g, *m));
        }
        Ok(())
    }
    fn remove_msi_route(&self, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        if s.irqfds.contains(&gsi) {
            return Err(RoutingError::IrqfdStillRegistered(gsi));
        }
        s.routes.remove(&gsi);
        s.calls.push(VmCall::RemoveRoute(gsi));
        Ok(())
    }
    fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        if !s.routes.contains_key(&gsi) {
            return Err(RoutingError::NoRoute(gsi));
        }
        s.irqfds.insert(gsi);
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
        if gsi >= 24 {
            return Err(RoutingError::ResampleNeedsIrqchip(gsi));
        }
        s.irqfds.insert(gsi);
        s.calls.push(VmCall::ResampleIrqfd(gsi));
        Ok(())
    }
    fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), RoutingError> {
        let mut s = self.state.lock().unwrap();
        s.irqfds.remove(&gsi);
        s.calls.push(VmCall::UnregisterIrqfd(gsi));
        Ok(())
    }
}
