//! The event loop's side of the API: [`ApiHandler`], an event-manager subscriber on the
//! mailbox's eventfd, answers each request on the main thread, where the VM's state is:
//! the stop latch, the power button, the device list and the [`Hotplug`] owner. No
//! request blocks a vCPU or takes a lock a vCPU holds while it runs the guest.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use devices::power::PowerButton;
use devices::vfio::naming::DeviceName;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::error::ApiError;
use super::hotplug::Hotplug;
use super::mailbox::{Inbox, Reply};
use super::request::{AddDevice, ApiRequest};
use super::response::{
    AddedDevice, ApiResponse, ConfigSummary, DeviceInfo, PingResponse, VmInfo, VmState,
};
use crate::exit::{ExitReason, VmExit};

/// What the API acts on.
pub struct VmControl {
    /// The stop latch (`vm.shutdown`, `vmm.shutdown`; `state` in `vm.info`).
    pub exit: Arc<VmExit>,
    /// The guest's ACPI power button, the one SIGPWR presses.
    pub button: Arc<PowerButton>,
    /// The validated configuration.
    pub config: ConfigSummary,
    /// The devices given at start.
    pub devices: Vec<DeviceInfo>,
    /// Adds and removes devices while the guest runs.
    pub hotplug: Box<dyn Hotplug>,
}

/// Answers the API's requests from the event loop.
pub struct ApiHandler {
    inbox: Inbox,
    vm: VmControl,
}

impl ApiHandler {
    /// A handler for the requests posted to `inbox`.
    pub fn new(inbox: Inbox, vm: VmControl) -> Self {
        Self { inbox, vm }
    }

    /// Every device: the ones given at start, then the hot-plugged ones.
    fn devices(&self) -> Vec<DeviceInfo> {
        let mut all = self.vm.devices.clone();
        all.extend(self.vm.hotplug.devices());
        all
    }

    fn running(&self) -> Result<(), ApiError> {
        if self.vm.exit.is_stopping() {
            Err(ApiError::Stopping)
        } else {
            Ok(())
        }
    }

    /// The answer to one request.
    pub fn handle(&mut self, request: ApiRequest) -> Reply {
        match request {
            ApiRequest::Ping => Ok(ApiResponse::Ping(PingResponse::current())),
            ApiRequest::Info => Ok(ApiResponse::Info(Box::new(VmInfo {
                state: if self.vm.exit.is_stopping() {
                    VmState::Stopping
                } else {
                    VmState::Running
                },
                config: self.vm.config.clone(),
                devices: self.devices(),
            }))),
            ApiRequest::AddDevice(AddDevice { spec, fd }) => {
                self.running()?;
                let devices = self.devices();
                if let Some(id) = &spec.id {
                    if devices.iter().any(|d| &d.id == id) {
                        return Err(ApiError::IdTaken { id: id.clone() });
                    }
                }
                if let Some(d) = devices.iter().find(|d| names(&spec.name, d)) {
                    return Err(ApiError::Conflict {
                        message: format!(
                            "{} is already in this VM, as {} at {}",
                            d.host.name, d.id, d.guest_bdf
                        ),
                        hint: "a device is assigned to one VM once; remove it first to plug \
                               it elsewhere"
                            .into(),
                    });
                }
                let info = self.vm.hotplug.add(spec, fd)?;
                log::warn!(
                    "API: added {} ({}) at {}",
                    info.id,
                    info.given_as,
                    info.guest_bdf
                );
                Ok(ApiResponse::DeviceAdded(AddedDevice::from(&info)))
            }
            ApiRequest::RemoveDevice { id } => {
                self.running()?;
                if !self.devices().iter().any(|d| d.id == id) {
                    return Err(ApiError::UnknownDevice { id });
                }
                self.vm.hotplug.remove(&id)?;
                log::warn!("API: asked the guest to let go of {id}");
                Ok(ApiResponse::NoContent)
            }
            ApiRequest::PowerButton => {
                self.running()?;
                self.vm.button.press().map_err(|e| {
                    ApiError::Internal(format!("cannot press the power button: {e}"))
                })?;
                log::warn!(
                    "API: pressed the guest's power button; the VM ends when the guest powers off"
                );
                Ok(ApiResponse::NoContent)
            }
            ApiRequest::Shutdown(scope) => {
                self.vm
                    .exit
                    .request(ExitReason::ApiShutdown(scope.endpoint()));
                Ok(ApiResponse::NoContent)
            }
        }
    }
}

/// Whether `name` plainly names `device`'s host function (a PCI address or a sysfs
/// path); other forms (a cdev, a group) are the hot-plug owner's to resolve.
fn names(name: &DeviceName, device: &DeviceInfo) -> bool {
    match name {
        DeviceName::Bdf(b) => device.host.bdf.as_deref() == Some(b.to_string().as_str()),
        DeviceName::Sysfs { path } => {
            let sysfs = std::path::Path::new(&device.host.sysfs);
            path == sysfs || path.file_name() == Some(std::ffi::OsStr::new(&device.host.name))
        }
        _ => false,
    }
}

impl MutEventSubscriber for ApiHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let fd = self.inbox.wake_fd().as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, 0, EventSet::IN)) {
            log::error!("cannot watch the API's requests ({e:?}); the API will not answer");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.answer_posted();
    }
}

impl ApiHandler {
    /// Answers every request posted so far.
    pub fn answer_posted(&mut self) {
        for envelope in self.inbox.take() {
            let (request, reply_to) = envelope.open();
            let reply = self.handle(request);
            reply_to.answer(reply);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::hotplug::NoHotplugSlots;
    use crate::api::mailbox;
    use crate::api::request::{self as req, ShutdownScope};
    use crate::api::response::{CpusSummary, HostDevice, MemorySummary, PayloadSummary};
    use devices::vfio::naming::{parse_device_spec, DeviceSpec};
    use std::os::fd::OwnedFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// A device given at start, as `vm.info` lists it.
    pub(crate) fn boot_device() -> DeviceInfo {
        DeviceInfo {
            id: "d0".into(),
            host: HostDevice {
                name: "0000:00:04.0".into(),
                bdf: Some("0000:00:04.0".into()),
                sysfs: "/sys/bus/pci/devices/0000:00:04.0".into(),
            },
            given_as: "/dev/vfio/devices/vfio0".into(),
            guest_bdf: "0000:00:01.0".into(),
            backend: "iommufd".into(),
            hotplugged: false,
        }
    }

    pub(crate) fn config() -> ConfigSummary {
        ConfigSummary {
            cpus: CpusSummary { boot_vcpus: 1 },
            memory: MemorySummary {
                size: 128 << 20,
                hugepages: false,
                dma_map: "auto".into(),
            },
            payload: PayloadSummary {
                kernel: "/bed/l2/bzImage".into(),
                initramfs: None,
                cmdline: "console=ttyS0".into(),
            },
            serial: "tty".into(),
            devices: Vec::new(),
            vfio_backend: "auto".into(),
            seccomp: "on".into(),
        }
    }

    /// A hot-plug owner that plugs everything into slot 5 and removes at once.
    #[derive(Default)]
    struct FakeSlots(Vec<DeviceInfo>);

    impl Hotplug for FakeSlots {
        fn add(&mut self, spec: DeviceSpec, fd: Option<OwnedFd>) -> Result<DeviceInfo, ApiError> {
            let info = DeviceInfo {
                id: spec.id.clone().unwrap_or_else(|| "hp0".into()),
                host: HostDevice {
                    name: spec.name_given.clone(),
                    bdf: None,
                    sysfs: String::new(),
                },
                given_as: if fd.is_some() {
                    "fd".into()
                } else {
                    spec.name_given
                },
                guest_bdf: "0000:01:00.0".into(),
                backend: "iommufd".into(),
                hotplugged: true,
            };
            self.0.push(info.clone());
            Ok(info)
        }

        fn remove(&mut self, id: &str) -> Result<(), ApiError> {
            self.0.retain(|d| d.id != id);
            Ok(())
        }

        fn devices(&self) -> Vec<DeviceInfo> {
            self.0.clone()
        }
    }

    /// A handler for a VM with one boot device, and the power button's irqfd.
    pub(crate) fn handler(
        hotplug: Box<dyn Hotplug>,
    ) -> (ApiHandler, Arc<VmExit>, EventFd, mailbox::Mailbox) {
        let (mailbox, inbox) = mailbox::pair().unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let probe = irq.try_clone().unwrap();
        let exit = Arc::new(VmExit::new().unwrap());
        let h = ApiHandler::new(
            inbox,
            VmControl {
                exit: exit.clone(),
                button: Arc::new(PowerButton::new(irq)),
                config: config(),
                devices: vec![boot_device()],
                hotplug,
            },
        );
        (h, exit, probe, mailbox)
    }

    fn add(arg: &str) -> ApiRequest {
        ApiRequest::AddDevice(req::AddDevice {
            spec: parse_device_spec(arg).unwrap(),
            fd: None,
        })
    }

    #[test]
    fn ping_info_and_the_power_button() {
        let (mut h, exit, button, _) = handler(Box::new(NoHotplugSlots));
        match h.handle(ApiRequest::Ping) {
            Ok(ApiResponse::Ping(p)) => assert_eq!(p.version, env!("CARGO_PKG_VERSION")),
            other => panic!("{other:?}"),
        }
        match h.handle(ApiRequest::Info) {
            Ok(ApiResponse::Info(i)) => {
                assert_eq!(i.state, VmState::Running);
                assert_eq!(i.devices, vec![boot_device()]);
                assert_eq!(i.config, config());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.handle(ApiRequest::PowerButton),
            Ok(ApiResponse::NoContent)
        );
        assert_eq!(button.read().unwrap(), 1, "one press on the GED's irqfd");
        assert!(!exit.is_stopping(), "the guest decides");
    }

    #[test]
    fn without_slots_add_and_remove_are_503_and_bad_ids_404_or_409() {
        let (mut h, exit, _, _) = handler(Box::new(NoHotplugSlots));
        let e = h.handle(add("0000:00:05.0,id=new")).unwrap_err();
        assert_eq!(e, ApiError::no_hotplug_slot());
        assert_eq!(e.status(), 503);
        let e = h.handle(add("0000:00:05.0,id=d0")).unwrap_err();
        assert_eq!(
            (e.status(), e),
            (409, ApiError::IdTaken { id: "d0".into() })
        );
        let e = h.handle(add("0000:00:04.0")).unwrap_err();
        assert_eq!(e.status(), 409);
        assert!(
            e.to_string()
                .contains("already in this VM, as d0 at 0000:00:01.0"),
            "{e}"
        );
        let e = h
            .handle(add("/sys/bus/pci/devices/0000:00:04.0"))
            .unwrap_err();
        assert_eq!(e.status(), 409);
        let e = h
            .handle(ApiRequest::RemoveDevice {
                id: "nosuch".into(),
            })
            .unwrap_err();
        assert_eq!(
            e,
            ApiError::UnknownDevice {
                id: "nosuch".into()
            }
        );
        assert_eq!(e.status(), 404);
        let e = h
            .handle(ApiRequest::RemoveDevice { id: "d0".into() })
            .unwrap_err();
        assert_eq!(e.status(), 503);
        assert!(!exit.is_stopping(), "bad requests never stop the VM");
    }

    #[test]
    fn a_hot_plugged_device_is_listed_until_removed() {
        let (mut h, _, _, _) = handler(Box::new(FakeSlots::default()));
        match h.handle(add("0000:00:05.0,id=nic")) {
            Ok(ApiResponse::DeviceAdded(a)) => {
                assert_eq!((a.id.as_str(), a.bdf.as_str()), ("nic", "0000:01:00.0"))
            }
            other => panic!("{other:?}"),
        }
        let listed = |h: &mut ApiHandler| match h.handle(ApiRequest::Info) {
            Ok(ApiResponse::Info(i)) => i.devices.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(listed(&mut h), ["d0", "nic"]);
        assert_eq!(
            h.handle(add("0000:00:06.0,id=nic")).unwrap_err(),
            ApiError::IdTaken { id: "nic".into() }
        );
        assert_eq!(
            h.handle(ApiRequest::RemoveDevice { id: "nic".into() }),
            Ok(ApiResponse::NoContent)
        );
        assert_eq!(listed(&mut h), ["d0"]);
    }

    #[test]
    fn shutdown_stops_the_vm_and_then_only_reads_are_answered() {
        let (mut h, exit, _, _) = handler(Box::new(FakeSlots::default()));
        assert_eq!(
            h.handle(ApiRequest::Shutdown(ShutdownScope::Vm)),
            Ok(ApiResponse::NoContent)
        );
        assert_eq!(exit.reason(), Some(ExitReason::ApiShutdown("vm.shutdown")));
        assert_eq!(h.handle(add("0000:00:05.0")), Err(ApiError::Stopping));
        assert_eq!(h.handle(ApiRequest::PowerButton), Err(ApiError::Stopping));
        match h.handle(ApiRequest::Info) {
            Ok(ApiResponse::Info(i)) => assert_eq!(i.state, VmState::Stopping),
            other => panic!("{other:?}"),
        }
        // The first reason stays.
        h.handle(ApiRequest::Shutdown(ShutdownScope::Vmm)).unwrap();
        assert_eq!(exit.reason(), Some(ExitReason::ApiShutdown("vm.shutdown")));
    }
}
