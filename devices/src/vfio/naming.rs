//! The syntax of `--device`: every way a user can name a device, parsed into types.
//!
//! This module only looks at the string. It never touches the filesystem, so every
//! form can be checked in isolation; `discovery` then resolves a [`DeviceSpec`] against
//! a sysfs and a `/dev` root.
//!
//! Accepted forms (alone, as `path=FORM`, or as `FORM,key=value,...`):
//!
//! | form                               | meaning                                              |
//! |------------------------------------|------------------------------------------------------|
//! | `/dev/vfio/devices/vfioN`          | a VFIO device cdev (iommufd backend)                 |
//! | `/sys/bus/pci/devices/DDDD:BB:DD.F`| any sysfs path of a PCI or mdev device              |
//! | `DDDD:BB:DD.F` or `BB:DD.F`        | a PCI address; `BB:DD.F` implies domain 0000         |
//! | `/dev/vfio/<bus>/<name>`           | the (bus type, device name) pair, e.g. `/dev/vfio/pci/0000:0a:03.1` |
//! | `/dev/vfio/N`                      | an IOMMU group: all its devices, or `,bdf=` one (also `/sys/kernel/iommu_groups/N`) |
//! | `/sys/bus/mdev/devices/<uuid>`     | a mediated device                                    |
//! | `fd=N`                             | an already-open cdev fd (needs `--iommufd-fd`)       |

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use crate::option_list::{self, OptionListError};

/// The forms `--device` accepts, for error messages.
pub const ACCEPTED_FORMS: &str = "\
accepted forms:
  /dev/vfio/devices/vfioN              a VFIO device cdev
  /sys/bus/pci/devices/DDDD:BB:DD.F    a sysfs device path (any path under /sys/devices works)
  DDDD:BB:DD.F or BB:DD.F              a PCI address (domain 0000 implied by the short form)
  /dev/vfio/<bus>/<name>               bus type + device name, e.g. /dev/vfio/pci/0000:0a:03.1
  /dev/vfio/N                          an IOMMU group (every device in it; add ,bdf=... for one)
  /sys/bus/mdev/devices/<uuid>         a mediated device
  fd=N                                 an open VFIO cdev fd from a launcher (and --iommufd-fd, optional)
options: path=FORM, id=NAME, bdf=BDF (with a group), managed=on|off|force,
         rombar=on|off, romfile=PATH (the guest's expansion ROM),
         addr=SLOT[.FN] (hex: where the guest sees it on bus 0),
         port=N (behind PCIe root port N of --pcie-ports, removable at run time)";

/// A syntax error in a `--device` value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NamingError {
    /// The value is empty.
    #[error("--device needs a value\n{ACCEPTED_FORMS}")]
    Empty,
    /// The value is not a well-formed option list (unknown, repeated or empty option).
    #[error("--device {given:?}: {source}")]
    List {
        /// The whole `--device` value.
        given: String,
        /// What is wrong with the list.
        #[source]
        source: OptionListError,
    },
    /// An option value is wrong.
    #[error("--device {given:?}: {key}={value:?}: {why}")]
    BadValue {
        /// The whole `--device` value.
        given: String,
        /// The option.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what would be right.
        why: String,
    },
    /// Neither a device name nor `fd=` was given, or both were.
    #[error("--device {given:?}: {why}\n{ACCEPTED_FORMS}")]
    Shape {
        /// The whole `--device` value.
        given: String,
        /// What is missing or conflicting.
        why: String,
    },
    /// The name matches none of the accepted forms.
    #[error("--device {given:?}: {why}\n{ACCEPTED_FORMS}")]
    Unrecognised {
        /// The device name part.
        given: String,
        /// Why it was not recognised.
        why: String,
    },
    /// A PCI address is malformed or out of range.
    #[error("{given:?} is not a PCI address: {why} (expected DDDD:BB:DD.F or BB:DD.F, hex; bus <= ff, device <= 1f, function <= 7)")]
    BadBdf {
        /// The text that was parsed.
        given: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// A PCI address: domain, bus, device (slot), function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI segment. Usually 0; VMD domains go above 0xffff, so this is wider than 16 bits.
    pub domain: u32,
    /// Bus number, 0..=0xff.
    pub bus: u8,
    /// Device (slot) number, 0..=0x1f.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl Bdf {
    /// The sysfs name of this address (`0000:0a:03.1`).
    pub fn sysfs_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

fn hex_field(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Bdf {
    type Err = NamingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| NamingError::BadBdf {
            given: s.to_string(),
            why,
        };
        let (slot, function) = s.rsplit_once('.').ok_or_else(|| bad("no '.F' function"))?;
        let function =
            hex_field(function, 1).ok_or_else(|| bad("function is not one hex digit"))?;
        if function > 7 {
            return Err(bad("function above 7"));
        }
        let parts: Vec<&str> = slot.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => ("0", *bus, *device),
            [domain, bus, device] => (*domain, *bus, *device),
            _ => return Err(bad("expected two or three ':'-separated fields before '.'")),
        };
        let domain = hex_field(domain, 8).ok_or_else(|| bad("domain is not 1-8 hex digits"))?;
        let bus = hex_field(bus, 2).ok_or_else(|| bad("bus is not 1-2 hex digits"))?;
        let device = hex_field(device, 2).ok_or_else(|| bad("device is not 1-2 hex digits"))?;
        if device > 0x1f {
            return Err(bad("device above 1f"));
        }
        // The field widths above bound every value, so the narrowing casts cannot truncate.
        Ok(Bdf {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

/// What the device part of a `--device` value names, before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceName {
    /// `/dev/vfio/devices/<name>`; `name` is the cdev name, e.g. `vfio0`.
    Cdev {
        /// The cdev name (`vfioN`).
        name: String,
    },
    /// A path under `/sys` (host view, normalised: no trailing slash, no `.`).
    Sysfs {
        /// The path as the host sees it, starting with `/sys`.
        path: PathBuf,
    },
    /// A PCI address.
    Bdf(Bdf),
    /// `/dev/vfio/<bus>/<name>`: a bus type and a device name on that bus.
    BusName {
        /// The bus type (a directory name under `/sys/bus`).
        bus: String,
        /// The device name on that bus (for `pci`, normalised to `DDDD:BB:DD.F`).
        name: String,
    },
    /// `/dev/vfio/N`: an IOMMU group.
    Group {
        /// The group number.
        id: u32,
    },
    /// Some other path (relative, or outside `/sys` and `/dev`): the resolver
    /// canonicalises it and classifies the result.
    OtherPath {
        /// The path as given.
        path: PathBuf,
    },
    /// `fd=N`: an open device cdev handed over by a launcher.
    Fd(i32),
}

/// One parsed `--device` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The value exactly as the user gave it.
    pub given: String,
    /// The device part (`path=` or the leading form, or `fd=`), as given.
    pub name_given: String,
    /// What the device part names.
    pub name: DeviceName,
    /// `id=`: the user's name for the device.
    pub id: Option<String>,
    /// `bdf=`: which device of a group.
    pub bdf: Option<Bdf>,
    /// `managed=on`: bind to vfio-pci for the VM's life and restore afterwards.
    pub managed: bool,
    /// `managed=force`: bind even while the host uses the device (a mount, an up
    /// interface, the boot VGA, a console), which `managed=on` refuses.
    pub managed_force: bool,
    /// `rombar=` / `romfile=`: what the guest's expansion ROM BAR shows.
    pub rom: RomChoice,
    /// `addr=SLOT[.FN]`: where the guest sees it.
    pub addr: Option<GuestAddr>,
    /// `port=N`: behind PCIe root port N (1 to [`MAX_PORT`], of `--pcie-ports`) from
    /// the start, where the guest can later have it removed as it would a hot-added one.
    pub port: Option<u8>,
}

/// The highest root port a `port=` can name (passvm creates at most this many).
pub const MAX_PORT: u8 = 8;

/// A guest PCI address on bus 0 (`addr=SLOT[.FN]`, hex as QEMU takes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestAddr {
    /// Slot 1-0x1f (0 is the host bridge).
    pub slot: u8,
    /// Function 0-7, when given.
    pub function: Option<u8>,
}

impl FromStr for GuestAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (slot, function) = match s.split_once('.') {
            Some((sl, f)) => (sl, Some(f)),
            None => (s, None),
        };
        let hex = |v: &str| {
            let v = v.strip_prefix("0x").unwrap_or(v);
            (!v.is_empty() && v.len() <= 2)
                .then(|| u8::from_str_radix(v, 16).ok())
                .flatten()
        };
        let slot = hex(slot)
            .filter(|s| (1..=0x1f).contains(s))
            .ok_or("the slot is a hex number from 01 to 1f (00 is the host bridge)")?;
        let function = match function {
            None => None,
            Some(f) => Some(
                f.parse::<u8>()
                    .ok()
                    .filter(|f| *f <= 7)
                    .ok_or("the function is 0-7")?,
            ),
        };
        Ok(GuestAddr { slot, function })
    }
}

/// What a device's expansion ROM BAR shows the guest (the options QEMU users know).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RomChoice {
    /// The device's own ROM, if it has one (the default, `rombar=on`).
    #[default]
    Device,
    /// No ROM BAR (`rombar=off`).
    Off,
    /// The image in this file instead (`romfile=PATH`).
    File(PathBuf),
}

impl FromStr for DeviceSpec {
    type Err = NamingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_device_spec(s)
    }
}

const KEYS: [&str; 9] = [
    "path", "fd", "id", "bdf", "managed", "rombar", "romfile", "addr", "port",
];

/// Parses one `--device` value.
///
/// The device part may come first without a key (`0a:03.1,id=nic`) or as `path=`.
/// A path that contains `,` cannot be given; that limit is shared with every
/// comma-separated option syntax and is documented.
pub fn parse_device_spec(s: &str) -> Result<DeviceSpec, NamingError> {
    let given = s.to_string();
    if s.trim().is_empty() {
        return Err(NamingError::Empty);
    }
    let mut values: [Option<&str>; 9] = [None; 9];
    let pairs = option_list::parse(s, &KEYS).map_err(|source| NamingError::List {
        given: given.clone(),
        source,
    })?;
    for (key, value) in pairs {
        if let Some(slot) = KEYS.iter().position(|k| *k == key) {
            values[slot] = Some(value);
        }
    }
    let [path, fd, id, bdf, managed, rombar, romfile, addr, port] = values;

    let (name_given, name) =
        match (path, fd) {
            (Some(_), Some(_)) => {
                return Err(NamingError::Shape {
                    given,
                    why: "give either a device name/path or fd=N, not both".into(),
                })
            }
            (None, None) => {
                return Err(NamingError::Shape {
                    given,
                    why: "no device: give a device name/path or fd=N".into(),
                })
            }
            (Some(p), None) => (p.to_string(), parse_device_name(p)?),
            (None, Some(f)) => {
                let n = f.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    NamingError::BadValue {
                        given: given.clone(),
                        key: "fd",
                        value: f.to_string(),
                        why: "expected a non-negative file descriptor number".into(),
                    }
                })?;
                (format!("fd={n}"), DeviceName::Fd(n))
            }
        };

    let id = match id {
        None => None,
        Some(v) if valid_id(v) => Some(v.to_string()),
        Some(v) => {
            return Err(NamingError::BadValue {
                given,
                key: "id",
                value: v.to_string(),
                why: "use 1-32 characters from A-Z a-z 0-9 _ - .".into(),
            })
        }
    };

    let bdf = match bdf {
        None => None,
        Some(v) => Some(v.parse::<Bdf>().map_err(|e| NamingError::BadValue {
            given: given.clone(),
            key: "bdf",
            value: v.to_string(),
            why: e.to_string(),
        })?),
    };
    if bdf.is_some() && !matches!(name, DeviceName::Group { .. }) {
        return Err(NamingError::BadValue {
            given,
            key: "bdf",
            value: bdf.map(|b| b.to_string()).unwrap_or_default(),
            why: "bdf= picks one device of a group (/dev/vfio/N); name the device directly instead"
                .into(),
        });
    }

    let (managed, managed_force) = match managed {
        None | Some("off") => (false, false),
        Some("on") => (true, false),
        Some("force") => (true, true),
        Some(v) => {
            return Err(NamingError::BadValue {
                given,
                key: "managed",
                value: v.to_string(),
                why: "expected on or off (or force: bind even while the host uses it)".into(),
            })
        }
    };
    if managed && matches!(name, DeviceName::Fd(_)) {
        return Err(NamingError::BadValue {
            given,
            key: "managed",
            value: "on".into(),
            why: "an fd=N device is already open; its launcher owns the driver binding".into(),
        });
    }

    let rom = match (rombar, romfile) {
        (None | Some("on"), None) => RomChoice::Device,
        (Some("off"), None) => RomChoice::Off,
        (None | Some("on"), Some(path)) => RomChoice::File(PathBuf::from(path)),
        (Some("off"), Some(_)) => {
            return Err(NamingError::BadValue {
                given,
                key: "romfile",
                value: romfile.unwrap_or_default().to_string(),
                why: "rombar=off hides the ROM BAR, so there is nothing to serve the file through; drop one of them".into(),
            })
        }
        (Some(v), _) => {
            return Err(NamingError::BadValue {
                given,
                key: "rombar",
                value: v.to_string(),
                why: "expected on or off".into(),
            })
        }
    };

    let addr = match addr {
        None => None,
        Some(v) => Some(
            v.parse::<GuestAddr>()
                .map_err(|why| NamingError::BadValue {
                    given: given.clone(),
                    key: "addr",
                    value: v.to_string(),
                    why: why.to_string(),
                })?,
        ),
    };

    let port = match port {
        None => None,
        Some(v) => Some(
            v.parse::<u8>()
                .ok()
                .filter(|n| (1..=MAX_PORT).contains(n))
                .ok_or_else(|| NamingError::BadValue {
                    given: given.clone(),
                    key: "port",
                    value: v.to_string(),
                    why: format!("expected a root port number, 1 to {MAX_PORT} (of --pcie-ports)"),
                })?,
        ),
    };
    if addr.is_some() && port.is_some() {
        return Err(NamingError::Shape {
            given,
            why: "addr= places a device on bus 0 and port= behind a root port; give one".into(),
        });
    }

    Ok(DeviceSpec {
        given,
        name_given,
        name,
        id,
        bdf,
        managed,
        managed_force,
        rom,
        addr,
        port,
    })
}

fn valid_id(v: &str) -> bool {
    (1..=32).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A bus type or device name taken from a path: one plain component, no traversal.
fn plain_component(c: &str) -> bool {
    !c.is_empty() && c != "." && c != ".." && !c.contains('/') && !c.contains('\0')
}

/// Parses the device part of a `--device` value (no options).
pub fn parse_device_name(s: &str) -> Result<DeviceName, NamingError> {
    let unrecognised = |why: &str| NamingError::Unrecognised {
        given: s.to_string(),
        why: why.to_string(),
    };
    if s.is_empty() {
        return Err(unrecognised("empty device name"));
    }
    if s.contains('\0') {
        return Err(unrecognised("contains a NUL byte"));
    }
    if !s.contains('/') {
        // Not a path: the only bare form is a PCI address.
        if s.contains(':') && s.contains('.') {
            return Ok(DeviceName::Bdf(s.parse()?));
        }
        return Err(unrecognised(
            "not a path and not a PCI address (DDDD:BB:DD.F or BB:DD.F)",
        ));
    }
    let path = Path::new(s);
    if !path.is_absolute() {
        return Ok(DeviceName::OtherPath { path: path.into() });
    }
    // `components()` drops repeated and trailing slashes and `.`; `..` stays and
    // sends the path to canonicalisation, which is the only safe way to follow it.
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => match n.to_str() {
                Some(n) => parts.push(n),
                None => return Err(unrecognised("not valid UTF-8")),
            },
            Component::ParentDir | Component::Prefix(_) => {
                return Ok(DeviceName::OtherPath { path: path.into() })
            }
        }
    }
    let normalised: PathBuf = std::iter::once("/").chain(parts.iter().copied()).collect();
    match parts.as_slice() {
        // A group's sysfs directory names the group, like /dev/vfio/N.
        ["sys", "kernel", "iommu_groups", group] | ["sys", "kernel", "iommu_groups", group, "devices"]
            if group.bytes().all(|b| b.is_ascii_digit()) =>
        {
            group
                .parse::<u32>()
                .map(|id| DeviceName::Group { id })
                .map_err(|_| unrecognised("group number out of range"))
        }
        ["sys", ..] => Ok(DeviceName::Sysfs { path: normalised }),
        ["dev", "iommu"] => Err(unrecognised(
            "/dev/iommu is the iommufd node, not a device; it is opened for you (or pass an open one with --iommufd-fd)",
        )),
        ["dev", "vfio"] => Err(unrecognised("/dev/vfio is a directory; name a device in it")),
        ["dev", "vfio", "vfio"] => Err(unrecognised(
            "/dev/vfio/vfio is the legacy container node, not a device; name the group (/dev/vfio/N) or the device",
        )),
        ["dev", "vfio", "devices", name] => {
            let digits = name.strip_prefix("vfio").unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(unrecognised(
                    "VFIO device cdevs are named /dev/vfio/devices/vfioN",
                ));
            }
            Ok(DeviceName::Cdev {
                name: (*name).to_string(),
            })
        }
        ["dev", "vfio", "devices"] => Err(unrecognised(
            "/dev/vfio/devices is a directory; name a cdev in it (vfioN)",
        )),
        ["dev", "vfio", group] if group.bytes().all(|b| b.is_ascii_digit()) => group
            .parse::<u32>()
            .map(|id| DeviceName::Group { id })
            .map_err(|_| unrecognised("group number out of range")),
        ["dev", "vfio", group] if group.starts_with("noiommu-") => Err(unrecognised(
            "no-IOMMU groups give a VM unrestricted DMA to host memory; passvm refuses them (enable an IOMMU instead)",
        )),
        ["dev", "vfio", bus, name] if plain_component(bus) && plain_component(name) => {
            let name = if *bus == "pci" {
                name.parse::<Bdf>()?.to_string()
            } else {
                (*name).to_string()
            };
            Ok(DeviceName::BusName {
                bus: (*bus).to_string(),
                name,
            })
        }
        ["dev", "vfio", ..] => Err(unrecognised(
            "not a VFIO name: use /dev/vfio/devices/vfioN, /dev/vfio/N or /dev/vfio/<bus>/<name>",
        )),
        _ => Ok(DeviceName::OtherPath { path: normalised }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DeviceName {
        parse_device_name(s).unwrap()
    }

    fn bdf(d: u32, b: u8, s: u8, f: u8) -> Bdf {
        Bdf {
            domain: d,
            bus: b,
            device: s,
            function: f,
        }
    }

    #[test]
    fn bdf_long_and_short_forms() {
        assert_eq!("0000:0a:03.1".parse::<Bdf>().unwrap(), bdf(0, 0xa, 3, 1));
        assert_eq!("0a:03.1".parse::<Bdf>().unwrap(), bdf(0, 0xa, 3, 1));
        assert_eq!(
            "10000:ff:1f.7".parse::<Bdf>().unwrap(),
            bdf(0x10000, 0xff, 0x1f, 7)
        );
        assert_eq!(bdf(0, 0xa, 3, 1).to_string(), "0000:0a:03.1");
        assert_eq!("0A:03.1".parse::<Bdf>().unwrap(), bdf(0, 0xa, 3, 1));
    }

    #[test]
    fn bdf_ranges_are_enforced() {
        for bad in [
            "0000:100:00.0",
            "0000:00:20.0",
            "0000:00:00.8",
            "00:00.",
            ":00.0",
            "0000:00:00:00.0",
            "g0:00.0",
            "00:00.0.0",
            "+0:00.0",
            "000000000:00:00.0",
            "00:00.00",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn every_naming_form() {
        assert_eq!(
            name("/dev/vfio/devices/vfio12"),
            DeviceName::Cdev {
                name: "vfio12".into()
            }
        );
        assert_eq!(
            name("/sys/bus/pci/devices/0000:00:03.0/"),
            DeviceName::Sysfs {
                path: "/sys/bus/pci/devices/0000:00:03.0".into()
            }
        );
        assert_eq!(
            name("//sys//bus/pci/./devices/0000:00:03.0"),
            DeviceName::Sysfs {
                path: "/sys/bus/pci/devices/0000:00:03.0".into()
            }
        );
        assert_eq!(name("0000:00:03.0"), DeviceName::Bdf(bdf(0, 0, 3, 0)));
        assert_eq!(name("00:03.0"), DeviceName::Bdf(bdf(0, 0, 3, 0)));
        assert_eq!(
            name("/dev/vfio/pci/00:03.0"),
            DeviceName::BusName {
                bus: "pci".into(),
                name: "0000:00:03.0".into()
            }
        );
        assert_eq!(
            name("/dev/vfio/mdev/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001/"),
            DeviceName::BusName {
                bus: "mdev".into(),
                name: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into()
            }
        );
        assert_eq!(name("/dev/vfio/7"), DeviceName::Group { id: 7 });
        assert_eq!(
            name("/sys/kernel/iommu_groups/7/"),
            DeviceName::Group { id: 7 }
        );
        assert_eq!(
            name("/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"),
            DeviceName::Sysfs {
                path: "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".into()
            }
        );
        assert_eq!(
            name("some/link"),
            DeviceName::OtherPath {
                path: "some/link".into()
            }
        );
        assert_eq!(
            name("/sys/bus/pci/../pci/devices/0000:00:03.0"),
            DeviceName::OtherPath {
                path: "/sys/bus/pci/../pci/devices/0000:00:03.0".into()
            }
        );
    }

    #[test]
    fn vfio_nodes_that_are_not_devices_are_explained() {
        for (s, hint) in [
            ("/dev/vfio/vfio", "container"),
            ("/dev/iommu", "iommufd"),
            ("/dev/vfio/noiommu-0", "no-IOMMU"),
            ("/dev/vfio/devices/vfio", "vfioN"),
            ("/dev/vfio/devices/nvme0", "vfioN"),
            ("/dev/vfio/devices", "directory"),
            ("/dev/vfio/pci/0000:00:03.0/x", "not a VFIO name"),
            ("/dev/vfio/99999999999", "out of range"),
        ] {
            let e = parse_device_name(s).unwrap_err().to_string();
            assert!(e.contains(hint), "{s}: {e}");
        }
        // A bad BDF inside the pci form reports the BDF problem.
        let e = parse_device_name("/dev/vfio/pci/0000:00:33.0").unwrap_err();
        assert!(matches!(e, NamingError::BadBdf { .. }), "{e:?}");
    }

    #[test]
    fn options() {
        let s = parse_device_spec("path=/dev/vfio/3,id=disk0,bdf=00:04.1,managed=on").unwrap();
        assert_eq!(s.name, DeviceName::Group { id: 3 });
        assert_eq!(s.name_given, "/dev/vfio/3");
        assert_eq!(s.id.as_deref(), Some("disk0"));
        assert_eq!(s.bdf, Some(bdf(0, 0, 4, 1)));
        assert!(s.managed);
        let s = parse_device_spec("00:04.1,managed=off,id=a").unwrap();
        assert_eq!(s.name, DeviceName::Bdf(bdf(0, 0, 4, 1)));
        assert!(!s.managed);
        let s = parse_device_spec("fd=5").unwrap();
        assert_eq!(s.name, DeviceName::Fd(5));
        assert_eq!(s.rom, RomChoice::Device);
        let s = parse_device_spec("00:04.1,rombar=off").unwrap();
        assert_eq!(s.rom, RomChoice::Off);
        let s = parse_device_spec("00:04.1,romfile=/srv/vbios.rom,rombar=on").unwrap();
        assert_eq!(s.rom, RomChoice::File("/srv/vbios.rom".into()));
        let s = parse_device_spec("00:04.1,addr=0x1e.3").unwrap();
        assert_eq!(
            s.addr,
            Some(GuestAddr {
                slot: 0x1e,
                function: Some(3)
            })
        );
        let s = parse_device_spec("00:04.1,addr=5").unwrap();
        assert_eq!(
            s.addr,
            Some(GuestAddr {
                slot: 5,
                function: None
            })
        );
    }

    #[test]
    fn port_names_a_root_port_and_excludes_addr() {
        assert_eq!(parse_device_spec("00:04.1,port=2").unwrap().port, Some(2));
        assert_eq!(parse_device_spec("00:04.1").unwrap().port, None);
        for (bad, why) in [
            ("00:04.1,port=0", "1 to 8"),
            ("00:04.1,port=9", "1 to 8"),
            ("00:04.1,port=x", "1 to 8"),
            ("00:04.1,port=-1", "1 to 8"),
            ("00:04.1,port=1,addr=5", "give one"),
        ] {
            let e = parse_device_spec(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn option_errors_are_clear() {
        let cases = [
            ("path=00:01.0,colour=red", "unknown option \"colour\""),
            ("path=00:01.0,id=a,id=b", "given twice"),
            ("00:01.0,path=00:02.0", "given twice"),
            ("path=00:01.0,fd=3", "not both"),
            ("id=x", "no device"),
            ("fd=-1", "non-negative"),
            ("fd=three", "non-negative"),
            ("00:01.0,managed=yes", "on or off"),
            ("00:01.0,rombar=no", "on or off"),
            ("00:01.0,addr=00", "01 to 1f"),
            ("00:01.0,addr=20", "01 to 1f"),
            ("00:01.0,addr=5.8", "0-7"),
            ("00:01.0,addr=x", "hex number"),
            (
                "00:01.0,rombar=off,romfile=/x.rom",
                "nothing to serve the file through",
            ),
            ("00:01.0,bdf=00:01.0", "picks one device of a group"),
            ("/dev/vfio/3,bdf=00:40.0", "device above 1f"),
            ("00:01.0,id=", "\"id\" has no value"),
            ("00:01.0,id=a b", "1-32 characters"),
            ("00:01.0,,id=a", "must be key=value"),
            ("fd=4,managed=on", "launcher owns"),
            ("", "needs a value"),
            ("nonsense", "accepted forms"),
        ];
        for (s, want) in cases {
            let e = parse_device_spec(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn odd_strings_never_panic() {
        let odd = [
            "=",
            ",",
            ",,,",
            "==",
            "path=",
            "path==",
            "fd=",
            "fd=99999999999999",
            ":",
            ".",
            "..",
            "/",
            "//",
            "/dev",
            "/dev/",
            "/dev/vfio/",
            "/sys",
            "/sys/",
            "\0",
            "/dev/vfio/\0",
            "0:0.0",
            "::.",
            "ff:ff.ff",
            "\u{202e}00:01.0",
            "/dev/vfio/pci/..",
            "/dev/vfio/../vfio/1",
            "path=/dev/vfio/1,bdf=",
            "00:01.0,managed",
            "é:é.é",
            "0000:00:1f.7,id=ÿ",
        ];
        for s in odd {
            let _ = parse_device_spec(s);
        }
        // A crude fuzz: every prefix of a few long, messy strings.
        let messy = "path=/dev/vfio/pci/0000:0a:1f.7/,id=n_1.x,bdf=ff:1f.7,managed=on,fd=3=4,,";
        for i in 0..=messy.len() {
            if messy.is_char_boundary(i) {
                let _ = parse_device_spec(&messy[..i]);
                let _ = parse_device_spec(&messy[i..]);
            }
        }
    }
}
