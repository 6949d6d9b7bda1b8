//! What a client asks: the endpoints, and each request parsed and validated into a typed
//! [`ApiRequest`] on the API thread, so the event loop only ever sees requests it can
//! carry out. `vm.add-device`'s body goes through the parser `--device` uses
//! (`devices::vfio::naming`), so it takes the same forms and fails with the same
//! messages.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use devices::option_list;
use devices::vfio::naming::{parse_device_spec, DeviceSpec, NamingError};

use super::error::ApiError;

/// Every path starts with this (Cloud Hypervisor's prefix).
pub const API_PREFIX: &str = "/api/v1/";

/// The keys of `--device`, in the order its value is rebuilt from a body (the device
/// part first); `the_device_keys_are_the_parsers` checks the parser takes each.
pub const DEVICE_KEYS: [&str; 8] = [
    "path", "fd", "id", "bdf", "managed", "rombar", "romfile", "addr",
];

/// One endpoint of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET vmm.ping`: passvm's version.
    VmmPing,
    /// `GET vm.info`: state, configuration, devices.
    VmInfo,
    /// `PUT vm.add-device`: hot-plug a device.
    VmAddDevice,
    /// `PUT vm.remove-device`: unplug a device.
    VmRemoveDevice,
    /// `PUT vm.power-button`: press the guest's ACPI power button.
    VmPowerButton,
    /// `PUT vm.shutdown`: stop the VM now.
    VmShutdown,
    /// `PUT vmm.shutdown`: stop passvm now.
    VmmShutdown,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 7] = [
        Endpoint::VmmPing,
        Endpoint::VmInfo,
        Endpoint::VmAddDevice,
        Endpoint::VmRemoveDevice,
        Endpoint::VmPowerButton,
        Endpoint::VmShutdown,
        Endpoint::VmmShutdown,
    ];

    /// Its name, the path after [`API_PREFIX`].
    pub fn name(self) -> &'static str {
        match self {
            Self::VmmPing => "vmm.ping",
            Self::VmInfo => "vm.info",
            Self::VmAddDevice => "vm.add-device",
            Self::VmRemoveDevice => "vm.remove-device",
            Self::VmPowerButton => "vm.power-button",
            Self::VmShutdown => "vm.shutdown",
            Self::VmmShutdown => "vmm.shutdown",
        }
    }

    /// Its full path.
    pub fn path(self) -> String {
        format!("{API_PREFIX}{}", self.name())
    }

    /// The method it takes: GET reads, PUT acts (as in Cloud Hypervisor).
    pub fn method(self) -> &'static str {
        match self {
            Self::VmmPing | Self::VmInfo => "GET",
            _ => "PUT",
        }
    }

    /// The endpoint at `path` (without a query), if there is one.
    pub fn from_path(path: &str) -> Option<Self> {
        let name = path.strip_prefix(API_PREFIX)?;
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// A body this endpoint takes, for error hints.
    fn example(self) -> &'static str {
        match self {
            Self::VmAddDevice => r#"{"path": "0000:00:04.0", "id": "disk1"}"#,
            Self::VmRemoveDevice => r#"{"id": "disk1"}"#,
            _ => "no body at all",
        }
    }
}

/// Who `vm.shutdown` / `vmm.shutdown` stops. In passvm the process is the VM, so both
/// end passvm; the reason line says which was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownScope {
    /// `vm.shutdown`.
    Vm,
    /// `vmm.shutdown`.
    Vmm,
}

impl ShutdownScope {
    /// The endpoint's name, for the exit reason.
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::Vm => Endpoint::VmShutdown.name(),
            Self::Vmm => Endpoint::VmmShutdown.name(),
        }
    }
}

/// A device to hot-plug, validated as `--device` validates its value.
#[derive(Debug)]
pub struct AddDevice {
    /// The parsed description; with a descriptor, its name is `DeviceName::Fd(N)` where
    /// N is `fd`'s number in passvm's process.
    pub spec: DeviceSpec,
    /// The device's descriptor (a VFIO cdev opened by the caller), when it came with
    /// the request (SCM_RIGHTS) instead of a path.
    pub fd: Option<OwnedFd>,
}

/// A valid request, ready for the event loop.
#[derive(Debug)]
pub enum ApiRequest {
    /// `vmm.ping`.
    Ping,
    /// `vm.info`.
    Info,
    /// `vm.add-device`.
    AddDevice(AddDevice),
    /// `vm.remove-device`.
    RemoveDevice {
        /// The device's id.
        id: String,
    },
    /// `vm.power-button`.
    PowerButton,
    /// `vm.shutdown` or `vmm.shutdown`.
    Shutdown(ShutdownScope),
}

/// An on/off option in a JSON body: `"on"`, `"off"` (or `"force"` for `managed`) as on
/// the command line, or a JSON boolean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Flag {
    /// `true` is `on`, `false` is `off`.
    Bool(bool),
    /// The command line's word.
    Word(String),
}

impl Flag {
    fn as_word(&self) -> &str {
        match self {
            Self::Bool(true) => "on",
            Self::Bool(false) => "off",
            Self::Word(w) => w,
        }
    }
}

/// `vm.add-device`'s body: the keys of `--device` (without `fd`: a descriptor travels
/// with the request itself), plus Cloud Hypervisor's `DeviceConfig` fields, accepted when
/// they ask for what passvm does, so a body written for Cloud Hypervisor works as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDeviceBody {
    /// The device, in any form `--device` takes (BDF, sysfs path, cdev, group, mdev).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `id=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `bdf=`: which device of a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bdf: Option<String>,
    /// `managed=on|off|force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<Flag>,
    /// `rombar=on|off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rombar: Option<Flag>,
    /// `romfile=PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub romfile: Option<String>,
    /// `addr=SLOT[.FN]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Refused with the reason: a descriptor number is the sender's, not passvm's.
    #[serde(default, skip_serializing)]
    pub fd: Option<serde_json::Value>,
    /// Cloud Hypervisor's virtual IOMMU: passvm has none, so only `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu: Option<bool>,
    /// Cloud Hypervisor's PCI segment: passvm's guest has one, segment 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_segment: Option<u16>,
    /// Cloud Hypervisor's NVIDIA GPUDirect clique: only `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x_nv_gpudirect_clique: Option<u8>,
}

impl AddDeviceBody {
    /// The body for a `--device` value, checked as `--device` checks it, and the
    /// descriptor it names (`fd=N`), which the client sends with SCM_RIGHTS.
    pub fn from_device_arg(arg: &str) -> Result<(Self, Option<RawFd>), NamingError> {
        let spec = parse_device_spec(arg)?;
        let pairs = option_list::parse(arg, &DEVICE_KEYS).map_err(|source| NamingError::List {
            given: arg.to_string(),
            source,
        })?;
        let mut body = Self::default();
        let mut fd = None;
        for (key, value) in pairs {
            let v = Some(value.to_string());
            match key {
                "path" => body.path = v,
                "id" => body.id = v,
                "bdf" => body.bdf = v,
                "managed" => body.managed = v.map(Flag::Word),
                "rombar" => body.rombar = v.map(Flag::Word),
                "romfile" => body.romfile = v,
                "addr" => body.addr = v,
                _ => {}
            }
        }
        if let devices::vfio::naming::DeviceName::Fd(n) = spec.name {
            fd = Some(n);
        }
        Ok((body, fd))
    }

    /// The `--device` value this body stands for, with the device part `fd=N` when the
    /// device came as descriptor `fd`.
    fn device_arg(&self, fd: Option<RawFd>) -> Result<String, ApiError> {
        let bad = |why: String| ApiError::BadBody {
            endpoint: Endpoint::VmAddDevice.name(),
            why,
            example: Endpoint::VmAddDevice.example(),
        };
        if self.fd.is_some() {
            return Err(bad(
                "\"fd\": a descriptor's number means nothing in passvm's process; send the \
                 descriptor itself with SCM_RIGHTS on this request and leave out \"fd\" and \
                 \"path\" (passvm remote add-device fd=N does)"
                    .into(),
            ));
        }
        if self.iommu == Some(true) {
            return Err(bad(
                "\"iommu\": true asks for a virtual IOMMU, which passvm does not give the \
                 guest: leave it out or set it to false"
                    .into(),
            ));
        }
        if self.pci_segment.is_some_and(|s| s != 0) {
            return Err(bad(
                "\"pci_segment\": the guest has one PCI segment, 0: leave it out".into(),
            ));
        }
        if self.x_nv_gpudirect_clique.is_some() {
            return Err(bad(
                "\"x_nv_gpudirect_clique\": passvm has no GPUDirect cliques: leave it out".into(),
            ));
        }
        let device = match (&self.path, fd) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "the request carries a descriptor (SCM_RIGHTS) and names a \"path\": \
                     give one of the two"
                        .into(),
                ))
            }
            (None, None) => {
                return Err(bad(
                    "no device: give \"path\" (any form --device takes) or send the \
                     device's descriptor with SCM_RIGHTS"
                        .into(),
                ))
            }
            (Some(p), None) => ("path", p.clone()),
            (None, Some(n)) => ("fd", n.to_string()),
        };
        let rest = [
            ("id", self.id.clone()),
            ("bdf", self.bdf.clone()),
            (
                "managed",
                self.managed.as_ref().map(|f| f.as_word().to_string()),
            ),
            (
                "rombar",
                self.rombar.as_ref().map(|f| f.as_word().to_string()),
            ),
            ("romfile", self.romfile.clone()),
            ("addr", self.addr.clone()),
        ];
        let mut parts = Vec::with_capacity(rest.len() + 1);
        for (key, value) in std::iter::once((device.0, Some(device.1))).chain(rest) {
            let Some(value) = value else { continue };
            // The option list splits on ','; --device cannot carry one in a value either.
            if value.contains(',') {
                return Err(bad(format!(
                    "\"{key}\": {value:?} contains a ',', which no --device value can hold"
                )));
            }
            parts.push(format!("{key}={value}"));
        }
        Ok(parts.join(","))
    }

    /// The device description, parsed by `--device`'s parser.
    pub fn to_spec(&self, fd: Option<RawFd>) -> Result<DeviceSpec, ApiError> {
        let arg = self.device_arg(fd)?;
        parse_device_spec(&arg).map_err(|e| ApiError::BadDevice(e.to_string()))
    }
}

/// `vm.remove-device`'s body (Cloud Hypervisor's `VmRemoveDeviceData`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveDeviceBody {
    /// The device's id.
    pub id: String,
}

/// The request for `method` on `path` with `body` and the descriptors that came with it
/// (SCM_RIGHTS); those a request does not take are closed when it fails.
pub fn parse(
    method: &str,
    path: &str,
    body: &[u8],
    mut fds: Vec<OwnedFd>,
) -> Result<ApiRequest, ApiError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let endpoint = Endpoint::from_path(path).ok_or_else(|| ApiError::UnknownEndpoint {
        path: path.to_string(),
    })?;
    if method != endpoint.method() {
        return Err(ApiError::WrongMethod {
            method: method.to_string(),
            path: path.to_string(),
            allowed: endpoint.method(),
        });
    }
    let bad = |why: String| ApiError::BadBody {
        endpoint: endpoint.name(),
        why,
        example: endpoint.example(),
    };
    let fd = match (endpoint, fds.len()) {
        (_, 0) => None,
        (Endpoint::VmAddDevice, 1) => fds.pop(),
        (Endpoint::VmAddDevice, n) => {
            return Err(bad(format!(
                "the request carries {n} descriptors; a device is one"
            )))
        }
        (_, n) => return Err(bad(format!("takes no descriptor, and {n} came with it"))),
    };
    match endpoint {
        Endpoint::VmAddDevice => {
            let body: AddDeviceBody = json_body(body).map_err(bad)?;
            let spec = body.to_spec(fd.as_ref().map(AsRawFd::as_raw_fd))?;
            Ok(ApiRequest::AddDevice(AddDevice { spec, fd }))
        }
        Endpoint::VmRemoveDevice => {
            let body: RemoveDeviceBody = json_body(body).map_err(bad)?;
            if body.id.trim().is_empty() {
                return Err(bad("\"id\" is empty".into()));
            }
            Ok(ApiRequest::RemoveDevice { id: body.id })
        }
        other => {
            no_body(body).map_err(bad)?;
            Ok(match other {
                Endpoint::VmmPing => ApiRequest::Ping,
                Endpoint::VmInfo => ApiRequest::Info,
                Endpoint::VmPowerButton => ApiRequest::PowerButton,
                Endpoint::VmShutdown => ApiRequest::Shutdown(ShutdownScope::Vm),
                _ => ApiRequest::Shutdown(ShutdownScope::Vmm),
            })
        }
    }
}

/// A JSON object body.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("needs a JSON body".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("the body is not what it takes: {e}"))
}

/// No body, or an empty JSON object or null (what some clients send with every PUT).
fn no_body(body: &[u8]) -> Result<(), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Null) => Ok(()),
        Ok(serde_json::Value::Object(o)) if o.is_empty() => Ok(()),
        _ => Err("takes no body".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::vfio::naming::{Bdf, DeviceName, RomChoice};

    fn req(method: &str, name: &str, body: &str) -> Result<ApiRequest, ApiError> {
        parse(
            method,
            &format!("{API_PREFIX}{name}"),
            body.as_bytes(),
            Vec::new(),
        )
    }

    fn status(r: Result<ApiRequest, ApiError>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(e) => e.status(),
        }
    }

    fn a_fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    #[test]
    fn every_endpoint_parses_with_its_method() {
        assert!(matches!(req("GET", "vmm.ping", ""), Ok(ApiRequest::Ping)));
        assert!(matches!(req("GET", "vm.info", ""), Ok(ApiRequest::Info)));
        assert!(matches!(
            req("PUT", "vm.power-button", ""),
            Ok(ApiRequest::PowerButton)
        ));
        assert!(matches!(
            req("PUT", "vm.shutdown", "{}"),
            Ok(ApiRequest::Shutdown(ShutdownScope::Vm))
        ));
        assert!(matches!(
            req("PUT", "vmm.shutdown", "null"),
            Ok(ApiRequest::Shutdown(ShutdownScope::Vmm))
        ));
        match req("PUT", "vm.remove-device", r#"{"id": "disk1"}"#) {
            Ok(ApiRequest::RemoveDevice { id }) => assert_eq!(id, "disk1"),
            other => panic!("{other:?}"),
        }
        match req(
            "PUT",
            "vm.add-device",
            r#"{"path": "0a:03.1", "id": "nic", "managed": true, "rombar": "off", "addr": "05"}"#,
        ) {
            Ok(ApiRequest::AddDevice(AddDevice { spec, fd: None })) => {
                assert_eq!(
                    spec.name,
                    DeviceName::Bdf(Bdf {
                        domain: 0,
                        bus: 0x0a,
                        device: 3,
                        function: 1
                    })
                );
                assert_eq!(spec.id.as_deref(), Some("nic"));
                assert!(spec.managed);
                assert_eq!(spec.rom, RomChoice::Off);
                assert_eq!(spec.addr.map(|a| a.slot), Some(5));
            }
            other => panic!("{other:?}"),
        }
        // A query string is not part of the endpoint.
        assert!(matches!(
            parse("GET", "/api/v1/vmm.ping?x=1", b"", Vec::new()),
            Ok(ApiRequest::Ping)
        ));
    }

    #[test]
    fn every_device_form_is_taken() {
        for path in [
            "0000:0a:03.1",
            "0a:03.1",
            "/sys/bus/pci/devices/0000:0a:03.1",
            "/dev/vfio/devices/vfio3",
            "/dev/vfio/pci/0000:0a:03.1",
            "/dev/vfio/7",
            "/sys/kernel/iommu_groups/7",
            "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
            "./relative/path",
        ] {
            let body = serde_json::json!({ "path": path }).to_string();
            assert!(
                matches!(
                    req("PUT", "vm.add-device", &body),
                    Ok(ApiRequest::AddDevice(_))
                ),
                "{path}"
            );
        }
        let group = r#"{"path": "/dev/vfio/7", "bdf": "0000:0a:03.1"}"#;
        match req("PUT", "vm.add-device", group) {
            Ok(ApiRequest::AddDevice(a)) => assert!(a.spec.bdf.is_some()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_descriptor_with_the_request_is_the_device() {
        let fd = a_fd();
        let raw = fd.as_raw_fd();
        let r = parse("PUT", "/api/v1/vm.add-device", br#"{"id": "d1"}"#, vec![fd]);
        match r {
            Ok(ApiRequest::AddDevice(AddDevice { spec, fd: Some(fd) })) => {
                assert_eq!(spec.name, DeviceName::Fd(raw));
                assert_eq!(fd.as_raw_fd(), raw);
                assert_eq!(spec.id.as_deref(), Some("d1"));
            }
            other => panic!("{other:?}"),
        }
        // A path and a descriptor, two descriptors, a descriptor where none is taken.
        let both = parse(
            "PUT",
            "/api/v1/vm.add-device",
            br#"{"path": "0a:03.1"}"#,
            vec![a_fd()],
        );
        assert!(both
            .unwrap_err()
            .to_string()
            .contains("give one of the two"));
        let two = parse("PUT", "/api/v1/vm.add-device", b"{}", vec![a_fd(), a_fd()]);
        assert_eq!(status(two), 400);
        let stray = parse("GET", "/api/v1/vm.info", b"", vec![a_fd()]);
        assert!(stray
            .unwrap_err()
            .to_string()
            .contains("takes no descriptor"));
        // A number in the body is the sender's, not ours.
        let e = req("PUT", "vm.add-device", r#"{"fd": 7}"#).unwrap_err();
        assert!(e.to_string().contains("SCM_RIGHTS"), "{e}");
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        for path in [
            "/",
            "/api/v1/",
            "/api/v1/vm.boot",
            "/api/v2/vmm.ping",
            "vmm.ping",
        ] {
            let e = parse("GET", path, b"", Vec::new()).unwrap_err();
            assert_eq!(e.status(), 404, "{path}");
        }
        for e in Endpoint::ALL {
            let wrong = if e.method() == "GET" { "PUT" } else { "GET" };
            let r = parse(wrong, &e.path(), b"", Vec::new());
            assert_eq!(status(r), 405, "{e:?}");
            let r = parse("POST", &e.path(), b"", Vec::new());
            assert_eq!(status(r), 405, "{e:?}");
        }
    }

    #[test]
    fn bad_bodies_are_400_with_the_reason() {
        let cases = [
            ("vm.add-device", "", "needs a JSON body"),
            ("vm.add-device", "{", "not what it takes"),
            ("vm.add-device", "[1]", "not what it takes"),
            ("vm.add-device", r#"{"path": 5}"#, "invalid type"),
            (
                "vm.add-device",
                r#"{"path": "0a:03.1", "colour": "red"}"#,
                "unknown field `colour`",
            ),
            ("vm.add-device", r#"{"id": "x"}"#, "no device"),
            (
                "vm.add-device",
                r#"{"path": "0a:03.1", "iommu": true}"#,
                "virtual IOMMU",
            ),
            (
                "vm.add-device",
                r#"{"path": "0a:03.1", "pci_segment": 1}"#,
                "one PCI segment",
            ),
            ("vm.add-device", r#"{"path": "a,b"}"#, "contains a ','"),
            ("vm.remove-device", "", "needs a JSON body"),
            ("vm.remove-device", "{}", "missing field `id`"),
            ("vm.remove-device", r#"{"id": " "}"#, "empty"),
            (
                "vm.remove-device",
                r#"{"id": "a", "force": true}"#,
                "unknown field `force`",
            ),
            ("vm.power-button", r#"{"x": 1}"#, "takes no body"),
            ("vm.shutdown", "garbage", "takes no body"),
        ];
        for (name, body, want) in cases {
            let method = Endpoint::from_path(&format!("{API_PREFIX}{name}"))
                .unwrap()
                .method();
            let e = req(method, name, body).unwrap_err();
            assert_eq!(e.status(), 400, "{name} {body}: {e}");
            assert!(e.to_string().contains(want), "{name} {body}: {e}");
            assert!(e.hint().contains("send a body like"), "{e:?}");
        }
        // Cloud Hypervisor's own body for a device is taken as it is.
        let ch = r#"{"path": "/sys/bus/pci/devices/0000:01:00.0/", "iommu": false,
                     "id": null, "pci_segment": 0, "x_nv_gpudirect_clique": null}"#;
        assert!(matches!(
            req("PUT", "vm.add-device", ch),
            Ok(ApiRequest::AddDevice(_))
        ));
    }

    #[test]
    fn bad_option_values_get_the_device_parsers_message() {
        let cases = [
            (r#"{"path": "zz:zz.9"}"#, "is not a PCI address"),
            (
                r#"{"path": "0a:03.1", "id": "has space"}"#,
                "id=\"has space\"",
            ),
            (
                r#"{"path": "0a:03.1", "managed": "maybe"}"#,
                "managed=\"maybe\"",
            ),
            (
                r#"{"path": "0a:03.1", "addr": "40"}"#,
                "slot is a hex number",
            ),
            (
                r#"{"path": "0a:03.1", "bdf": "0a:03.1"}"#,
                "bdf= picks one device of a group",
            ),
            (r#"{"path": "0a:03.1", "id": ""}"#, "has no value"),
        ];
        for (body, want) in cases {
            match req("PUT", "vm.add-device", body) {
                Err(e @ ApiError::BadDevice(_)) => {
                    assert!(e.to_string().contains(want), "{body}: {e}");
                    assert_eq!(e.status(), 400);
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_device_keys_are_the_parsers() {
        for key in DEVICE_KEYS {
            let e = parse_device_spec(&format!("0a:03.1,{key}=")).unwrap_err();
            assert!(
                e.to_string().contains("has no value"),
                "--device knows {key}: {e}"
            );
        }
        assert!(parse_device_spec("0a:03.1,colour=red")
            .unwrap_err()
            .to_string()
            .contains(&format!("known: {}", DEVICE_KEYS.join(", "))));
    }

    #[test]
    fn a_device_arg_becomes_the_body_that_parses_back_to_it() {
        for arg in [
            "0000:0a:03.1",
            "path=/dev/vfio/7,bdf=0a:03.1,id=g",
            "/sys/bus/pci/devices/0000:0a:03.1,managed=force,rombar=off,addr=05.1",
            "0a:00.0,romfile=/srv/vbios.rom",
        ] {
            let (body, fd) = AddDeviceBody::from_device_arg(arg).unwrap();
            assert_eq!(fd, None);
            let json = serde_json::to_string(&body).unwrap();
            let back: AddDeviceBody = serde_json::from_str(&json).unwrap();
            let spec = back.to_spec(None).unwrap();
            let direct = parse_device_spec(arg).unwrap();
            assert_eq!(
                (
                    spec.name,
                    spec.id,
                    spec.bdf,
                    spec.managed,
                    spec.rom,
                    spec.addr
                ),
                (
                    direct.name,
                    direct.id,
                    direct.bdf,
                    direct.managed,
                    direct.rom,
                    direct.addr
                ),
                "{arg} -> {json}"
            );
        }
        let (body, fd) = AddDeviceBody::from_device_arg("fd=9,id=d").unwrap();
        assert_eq!(fd, Some(9));
        assert_eq!(body.path, None);
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"id":"d"}"#);
        assert!(AddDeviceBody::from_device_arg("0a:03.1,colour=red").is_err());
        assert!(AddDeviceBody::from_device_arg("").is_err());
    }
}
