//! What the API answers: the typed responses and their JSON shapes, with Cloud
//! Hypervisor's field names where the two APIs overlap (`vmm.ping`'s `version`,
//! `build_version` and `pid`; `vm.info`'s `state` and `config`; `vm.add-device`'s
//! `{"id", "bdf"}`), so its users and tooling read them as they are used to.

use serde::{Deserialize, Serialize};

use devices::vfio::discovery::BackendChoice;

use crate::config::{DmaMapTiming, SerialConfig, VmConfig};

/// `GET /api/v1/vmm.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    /// passvm's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The same with the program's name, as Cloud Hypervisor's `build_version`.
    pub build_version: String,
    /// passvm's process id.
    pub pid: u32,
    /// Optional features of this build (none yet), as Cloud Hypervisor lists its.
    pub features: Vec<String>,
}

impl PingResponse {
    /// This process's answer.
    pub fn current() -> Self {
        let version = env!("CARGO_PKG_VERSION").to_string();
        Self {
            build_version: format!("passvm {version}"),
            version,
            pid: std::process::id(),
            features: Vec::new(),
        }
    }
}

/// Whether the VM runs or is on its way down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// The guest runs (Cloud Hypervisor's spelling).
    Running,
    /// Something asked the VM to stop; passvm is tearing it down.
    Stopping,
}

/// `GET /api/v1/vm.info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Running or stopping.
    pub state: VmState,
    /// The validated configuration the VM was started with.
    pub config: ConfigSummary,
    /// Every passed-through device, in guest slot order for the ones given at start.
    pub devices: Vec<DeviceInfo>,
}

/// The VM's validated configuration (the command line after `config.rs`), in Cloud
/// Hypervisor's layout where the two overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSummary {
    /// vCPUs.
    pub cpus: CpusSummary,
    /// Guest RAM.
    pub memory: MemorySummary,
    /// What the guest boots.
    pub payload: PayloadSummary,
    /// COM1: `tty`, `file=PATH`, `null` or `off`.
    pub serial: String,
    /// Every `--device` as given.
    pub devices: Vec<DeviceArg>,
    /// `--vfio-backend`: `auto`, `iommufd` or `group` (what was chosen is each device's
    /// `backend`).
    pub vfio_backend: String,
    /// `--seccomp`: `on`, `log` or `off`.
    pub seccomp: String,
}

/// `--cpus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusSummary {
    /// vCPUs at boot.
    pub boot_vcpus: u8,
}

/// `--memory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySummary {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Backed by 2 MiB hugepages.
    pub hugepages: bool,
    /// When guest RAM is mapped for the devices: `auto`, `background` or `before-boot`.
    pub dma_map: String,
}

/// `--kernel`, `--initramfs`, `--cmdline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadSummary {
    /// The kernel image.
    pub kernel: String,
    /// The initramfs, if any.
    pub initramfs: Option<String>,
    /// The kernel command line.
    pub cmdline: String,
}

/// One `--device` as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceArg {
    /// The device part (`path=`, or `fd=N`).
    pub path: String,
    /// `id=`, if given.
    pub id: Option<String>,
    /// The whole value.
    pub given: String,
}

impl From<&VmConfig> for ConfigSummary {
    fn from(cfg: &VmConfig) -> Self {
        let shown = |p: &std::path::Path| p.display().to_string();
        Self {
            cpus: CpusSummary {
                boot_vcpus: cfg.vcpus,
            },
            memory: MemorySummary {
                size: cfg.memory.size,
                hugepages: cfg.memory.hugepages,
                dma_map: match cfg.memory.dma_map {
                    DmaMapTiming::Auto => "auto",
                    DmaMapTiming::Background => "background",
                    DmaMapTiming::BeforeBoot => "before-boot",
                }
                .into(),
            },
            payload: PayloadSummary {
                kernel: shown(&cfg.kernel),
                initramfs: cfg.initramfs.as_deref().map(shown),
                cmdline: cfg.cmdline.clone(),
            },
            serial: match &cfg.serial {
                SerialConfig::Tty => "tty".into(),
                SerialConfig::File(p) => format!("file={}", p.display()),
                SerialConfig::Null => "null".into(),
                SerialConfig::Off => "off".into(),
            },
            devices: cfg
                .devices
                .iter()
                .map(|d| DeviceArg {
                    path: d.name_given.clone(),
                    id: d.id.clone(),
                    given: d.given.clone(),
                })
                .collect(),
            vfio_backend: match cfg.vfio_backend {
                BackendChoice::Auto => "auto",
                BackendChoice::Iommufd => "iommufd",
                BackendChoice::Group => "group",
            }
            .into(),
            seccomp: format!("{:?}", cfg.seccomp).to_lowercase(),
        }
    }
}

/// A device the guest has from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its id: the `id=` it was given, else its host name.
    pub id: String,
    /// The host's device.
    pub host: HostDevice,
    /// What it was given as (`--device`'s device part, or the `vm.add-device` path).
    pub given_as: String,
    /// Where the guest sees it (`DDDD:BB:DD.F`).
    pub guest_bdf: String,
    /// The VFIO backend it is open through: `iommufd` or `group`.
    pub backend: String,
    /// Whether it came through `vm.add-device` (false: given at start).
    pub hotplugged: bool,
}

/// The host side of a passed-through device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDevice {
    /// Its sysfs name (a PCI address, or an mdev's UUID).
    pub name: String,
    /// Its PCI address, when it has one (an mdev has none).
    pub bdf: Option<String>,
    /// Its sysfs directory.
    pub sysfs: String,
}

/// `PUT /api/v1/vm.add-device`'s answer: Cloud Hypervisor's `PciDeviceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedDevice {
    /// The device's id.
    pub id: String,
    /// Where the guest sees it (`DDDD:BB:DD.F`).
    pub bdf: String,
}

impl From<&DeviceInfo> for AddedDevice {
    fn from(d: &DeviceInfo) -> Self {
        Self {
            id: d.id.clone(),
            bdf: d.guest_bdf.clone(),
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiResponse {
    /// `vmm.ping`.
    Ping(PingResponse),
    /// `vm.info`.
    Info(Box<VmInfo>),
    /// `vm.add-device`.
    DeviceAdded(AddedDevice),
    /// Done, nothing to say (204): `vm.remove-device`, `vm.power-button`, the shutdowns.
    NoContent,
}

impl ApiResponse {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoContent => 204,
            _ => 200,
        }
    }

    /// The JSON body, `None` for 204.
    pub fn body(&self) -> Option<Result<Vec<u8>, serde_json::Error>> {
        match self {
            Self::Ping(p) => Some(serde_json::to_vec(p)),
            Self::Info(i) => Some(serde_json::to_vec(i)),
            Self::DeviceAdded(a) => Some(serde_json::to_vec(a)),
            Self::NoContent => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_device() -> DeviceInfo {
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

    #[test]
    fn ping_names_this_version_and_process() {
        let p = PingResponse::current();
        assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(p.pid, std::process::id());
        let v: serde_json::Value =
            serde_json::from_slice(&ApiResponse::Ping(p).body().unwrap().unwrap()).unwrap();
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert!(v["build_version"].as_str().unwrap().starts_with("passvm "));
        assert!(v["features"].is_array());
    }

    #[test]
    fn info_and_added_device_have_the_documented_shapes() {
        let info = VmInfo {
            state: VmState::Running,
            config: ConfigSummary {
                cpus: CpusSummary { boot_vcpus: 2 },
                memory: MemorySummary {
                    size: 256 << 20,
                    hugepages: false,
                    dma_map: "auto".into(),
                },
                payload: PayloadSummary {
                    kernel: "/k".into(),
                    initramfs: None,
                    cmdline: "console=ttyS0".into(),
                },
                serial: "tty".into(),
                devices: vec![DeviceArg {
                    path: "/dev/vfio/devices/vfio0".into(),
                    id: Some("d0".into()),
                    given: "/dev/vfio/devices/vfio0,id=d0".into(),
                }],
                vfio_backend: "auto".into(),
                seccomp: "on".into(),
            },
            devices: vec![sample_device()],
        };
        let r = ApiResponse::Info(Box::new(info));
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body().unwrap().unwrap()).unwrap();
        assert_eq!(v["state"], "Running");
        assert_eq!(v["config"]["cpus"]["boot_vcpus"], 2);
        assert_eq!(v["config"]["memory"]["size"], 256 << 20);
        assert_eq!(v["config"]["payload"]["initramfs"], serde_json::Value::Null);
        assert_eq!(v["devices"][0]["id"], "d0");
        assert_eq!(v["devices"][0]["guest_bdf"], "0000:00:01.0");
        assert_eq!(v["devices"][0]["host"]["bdf"], "0000:00:04.0");
        assert_eq!(v["devices"][0]["backend"], "iommufd");

        let added = ApiResponse::DeviceAdded(AddedDevice::from(&sample_device()));
        let v: serde_json::Value = serde_json::from_slice(&added.body().unwrap().unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"id": "d0", "bdf": "0000:00:01.0"}));
        assert_eq!(ApiResponse::NoContent.status(), 204);
        assert!(ApiResponse::NoContent.body().is_none());
    }
}
