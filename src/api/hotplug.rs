//! [`Hotplug`]: what `vm.add-device` and `vm.remove-device` ask of the VMM, behind a
//! trait so the API does not depend on how devices are plugged. The VM owns one;
//! [`NoHotplugSlots`] is the answer of a VM without PCIe root ports (docs/hotplug.md).

use std::os::fd::OwnedFd;

use devices::vfio::naming::DeviceSpec;

use super::error::ApiError;
use super::response::DeviceInfo;

/// Adds and removes passed-through devices while the guest runs. Called on the main
/// thread, from the event loop, one request at a time: an implementation may use the
/// VM's devices and buses as the rest of the event loop does, and never runs beside
/// another request.
pub trait Hotplug: Send {
    /// Plugs the device `spec` describes into a free hot-pluggable slot and returns what
    /// `vm.info` lists for it (`hotplugged: true`; `guest_bdf` is the answer's `bdf`).
    /// `spec` is validated as `--device` validates its value; the handler has already
    /// refused an `id=` another device has (409). `fd` is the device's descriptor when
    /// it came with the request (SCM_RIGHTS): then `spec.name` is
    /// `DeviceName::Fd(fd.as_raw_fd())`, and the implementation owns the descriptor.
    ///
    /// Errors: [`ApiError::no_hotplug_slot`] (503) without a free slot;
    /// [`ApiError::Conflict`] (409) for a device this VM already has; the discovery
    /// message as [`ApiError::BadDevice`] (400) for a device that cannot be assigned;
    /// [`ApiError::Internal`] (500) when the host fails.
    fn add(&mut self, spec: DeviceSpec, fd: Option<OwnedFd>) -> Result<DeviceInfo, ApiError>;

    /// Unplugs device `id`, which the handler has checked is one of the VM's (404
    /// otherwise): asks the guest to let go of it (the slot's attention button) and
    /// returns; the device leaves [`Hotplug::devices`] once it is gone.
    fn remove(&mut self, id: &str) -> Result<(), ApiError>;

    /// The devices this implementation plugged, for `vm.info` and the id check.
    fn devices(&self) -> Vec<DeviceInfo> {
        Vec::new()
    }
}

/// A VM without a hot-pluggable slot: every add and remove is 503 with the fix.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHotplugSlots;

impl Hotplug for NoHotplugSlots {
    fn add(&mut self, _spec: DeviceSpec, _fd: Option<OwnedFd>) -> Result<DeviceInfo, ApiError> {
        Err(ApiError::no_hotplug_slot())
    }

    fn remove(&mut self, _id: &str) -> Result<(), ApiError> {
        Err(ApiError::no_hotplug_slot())
    }
}
