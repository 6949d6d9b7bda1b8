//! The validated description of a VM. [`VmConfig::from_args`] is the only place raw
//! command-line strings are interpreted; everything after it sees typed values only.

use std::fmt;
use std::path::{Path, PathBuf};

use devices::vfio::discovery::BackendChoice;
use devices::vfio::naming::{DeviceSpec, NamingError};

use devices::option_list;

use crate::api::socket::ApiSocketConfig;
use crate::cli::{parse_on_off, parse_size, ValueError, VmArgs};
use crate::seccomp::SeccompMode;

/// Kernel command line used when `--cmdline` is not given.
///
/// * `console=ttyS0`: the 8250 on 0x3f8 is the only console passvm emulates.
/// * `reboot=k`: reboot through the i8042 reset line (0xFE on port 0x64), which passvm turns
///   into a clean exit 0, also for a guest booted with `acpi=off`; with ACPI the FADT's
///   reset register works too (Linux's default, `reboot=acpi`). PCI 0xCF9 and BIOS resets
///   do not exist here, and the kernel's last resort is a triple fault, which passvm
///   reports as a crash.
/// * `panic=1`: a panicking guest reboots after one second instead of spinning forever; passvm
///   still reports it as a panic because it watches the console for the panic banner.
/// * `i8042.noaux i8042.nomux i8042.dumbkbd`: passvm's i8042 only implements the reset command;
///   with ACPI the FADT already tells Linux there is no controller to probe; these options
///   keep an `acpi=off` guest from probing a mouse port or waiting on keyboard replies.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Default vCPU count.
pub const DEFAULT_VCPUS: u8 = 1;
/// Default guest RAM: enough for a distribution kernel with a small initramfs.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Most vCPUs: xAPIC IDs are 8 bits and 0xff is the broadcast ID, so the MP table can name
/// 0..=254. KVM's own limit is checked when the VM is built.
pub const MAX_VCPUS: u8 = 254;
/// Hugepage-backed RAM must be a whole number of 2 MiB pages.
pub const HUGEPAGE_SIZE: u64 = 2 << 20;
use devices::size::PAGE_SIZE;

/// Guest RAM settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Bytes of guest RAM.
    pub size: u64,
    /// Back RAM with hugetlbfs pages.
    pub hugepages: bool,
    /// When passthrough devices get guest RAM mapped in the IOMMU.
    pub dma_map: DmaMapTiming,
}

/// When guest RAM is pinned and mapped for passthrough devices (`dma_map=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmaMapTiming {
    /// [`DmaMapTiming::Background`] when the host has a core to spare beyond the guest's
    /// vCPUs and the VMM's own thread, else [`DmaMapTiming::BeforeBoot`]: pinning beside
    /// the boot only hides its time when it does not take the guest's CPU (in the nested
    /// bed, 2 cores and a 1-vCPU, 1.5 GiB guest reached init after 6.7 s in the
    /// background against 3.9 s before the boot).
    #[default]
    Auto,
    /// On a helper thread while the guest boots; a device's Bus Master Enable waits for
    /// it (a large guest starts without waiting for its pinning).
    Background,
    /// Before the first vCPU runs, as other VMMs do (start-up includes the pinning).
    BeforeBoot,
}

impl DmaMapTiming {
    /// The timing for a guest of `vcpus` vCPUs on a host with `cores` cores.
    pub fn resolve(self, vcpus: u8, cores: usize) -> DmaMapTiming {
        match self {
            DmaMapTiming::Auto if cores > usize::from(vcpus) + 1 => DmaMapTiming::Background,
            DmaMapTiming::Auto => DmaMapTiming::BeforeBoot,
            chosen => chosen,
        }
    }
}

/// Where COM1 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin.
    Tty,
    /// Output appended to a file (created if missing), no input.
    File(PathBuf),
    /// The port exists but its output is discarded.
    Null,
    /// No serial port at all.
    Off,
}

/// A VM, fully validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Guest kernel image (checked to be a readable file).
    pub kernel: PathBuf,
    /// Initramfs (checked to be a readable file).
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM.
    pub memory: MemoryConfig,
    /// COM1.
    pub serial: SerialConfig,
    /// Every `--device`, parsed (what it names is resolved by discovery).
    pub devices: Vec<DeviceSpec>,
    /// VFIO backend choice.
    pub vfio_backend: BackendChoice,
    /// A pre-opened `/dev/iommu` descriptor.
    pub iommufd_fd: Option<i32>,
    /// Where the control API listens (`--api-socket`; checked by `api/socket.rs`).
    pub api_socket: Option<ApiSocketConfig>,
    /// What the threads' seccomp filters do with a call outside their lists.
    pub seccomp: SeccompMode,
    /// PCIe root ports with hot-plug slots (0..=[`crate::memory::MAX_PCIE_PORTS`]).
    pub pcie_ports: u8,
    /// Print the plan and exit.
    pub dry_run: bool,
}

/// A command-line problem, phrased as what is wrong and how to fix it.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No `--kernel`.
    NoKernel,
    /// A bad value for one option.
    Invalid {
        /// The option, e.g. `--memory`.
        option: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A `--device` value that does not parse (its message names the option).
    Device(NamingError),
    /// A file that cannot be opened.
    File {
        /// The option naming the file.
        option: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The OS error text.
        error: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKernel => write!(
                f,
                "no guest kernel: give --kernel PATH (a vmlinux or bzImage); see --help"
            ),
            Self::Invalid {
                option,
                value,
                reason,
            } => write!(f, "{option} '{value}': {reason}"),
            Self::Device(e) => write!(f, "{e}"),
            Self::File {
                option,
                path,
                error,
            } => write!(
                f,
                "{option} {}: cannot read it ({error}); check the path and its permissions",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(option: &'static str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        option,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

impl VmConfig {
    /// Validates raw command-line values. Files are opened once to catch typos and missing
    /// permissions now, with the option name in the message, rather than deep in the loader.
    pub fn from_args(args: &VmArgs) -> Result<Self, ConfigError> {
        let kernel = args.kernel.clone().ok_or(ConfigError::NoKernel)?;
        check_readable("--kernel", &kernel)?;
        if let Some(initramfs) = &args.initramfs {
            check_readable("--initramfs", initramfs)?;
        }
        let cmdline = match &args.cmdline {
            Some(c) if c.contains('\0') => {
                return Err(invalid("--cmdline", c, "contains a NUL byte; remove it"))
            }
            Some(c) => c.trim().to_string(),
            None => DEFAULT_CMDLINE.to_string(),
        };
        let vcpus = match &args.cpus {
            Some(s) => parse_cpus(s).map_err(|r| invalid("--cpus", s, r))?,
            None => DEFAULT_VCPUS,
        };
        let memory = match &args.memory {
            Some(s) => parse_memory(s).map_err(|r| invalid("--memory", s, r))?,
            None => MemoryConfig {
                size: DEFAULT_MEMORY,
                hugepages: false,
                dma_map: DmaMapTiming::default(),
            },
        };
        let serial = match &args.serial {
            Some(s) => parse_serial(s).map_err(|r| invalid("--serial", s, r))?,
            None => SerialConfig::Tty,
        };
        let devices = args
            .device
            .iter()
            .map(|d| d.parse::<DeviceSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Device)?;
        let vfio_backend: BackendChoice = args.vfio_backend.parse().map_err(|_| {
            invalid(
                "--vfio-backend",
                &args.vfio_backend,
                "use auto, iommufd or group",
            )
        })?;
        if let Some(fd) = args.iommufd_fd {
            if fd < 0 {
                return Err(invalid(
                    "--iommufd-fd",
                    &fd.to_string(),
                    "must be an open file descriptor number (0 or more)",
                ));
            }
        }
        let api_socket = match &args.api_socket {
            Some(s) => {
                Some(ApiSocketConfig::from_arg(s).map_err(|r| invalid("--api-socket", s, r))?)
            }
            None => None,
        };
        let seccomp = match &args.seccomp {
            Some(s) => s.parse().map_err(|r| invalid("--seccomp", s, r))?,
            None => SeccompMode::default(),
        };
        let pcie_ports = match &args.pcie_ports {
            Some(s) => s
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= crate::memory::MAX_PCIE_PORTS)
                .ok_or_else(|| {
                    invalid(
                        "--pcie-ports",
                        s,
                        format!(
                            "must be a number of root ports from 0 to {}",
                            crate::memory::MAX_PCIE_PORTS
                        ),
                    )
                })?,
            None => 0,
        };
        let mut taken: Vec<(u8, &str)> = Vec::new();
        for d in &devices {
            let Some(port) = d.port else { continue };
            if port > pcie_ports {
                return Err(invalid(
                    "--device",
                    &d.given,
                    format!(
                        "port={port} names a PCIe root port the VM does not have (--pcie-ports {pcie_ports}); pass --pcie-ports {port} or more"
                    ),
                ));
            }
            if let Some((_, first)) = taken.iter().find(|(p, _)| *p == port) {
                return Err(invalid(
                    "--device",
                    &d.given,
                    format!(
                        "port={port} already holds {first}; a root port's slot takes one device"
                    ),
                ));
            }
            taken.push((port, &d.given));
        }
        Ok(Self {
            kernel,
            initramfs: args.initramfs.clone(),
            cmdline,
            vcpus,
            memory,
            serial,
            devices,
            vfio_backend,
            iommufd_fd: args.iommufd_fd,
            api_socket,
            seccomp,
            pcie_ports,
            dry_run: args.dry_run,
        })
    }
}

fn check_readable(option: &'static str, path: &Path) -> Result<(), ConfigError> {
    let err = |error: String| ConfigError::File {
        option,
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| err(e.to_string()))
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    let opts = option_list::parse(s, &["boot"]).map_err(|e| format!("{e}; write boot=N"))?;
    let (_, v) = opts.first().ok_or("write boot=N")?;
    let n: u32 = v
        .parse()
        .map_err(|_| format!("{}; write boot=N", ValueError::Number(v.to_string())))?;
    match u8::try_from(n) {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(n),
        _ => Err(format!("boot must be between 1 and {MAX_VCPUS}")),
    }
}

fn parse_memory(s: &str) -> Result<MemoryConfig, String> {
    let opts = option_list::parse(s, &["size", "hugepages", "dma_map"]).map_err(|e| {
        format!("{e}; write size=SIZE[,hugepages=on][,dma_map=auto|background|before-boot]")
    })?;
    let mut cfg = MemoryConfig {
        size: DEFAULT_MEMORY,
        hugepages: false,
        dma_map: DmaMapTiming::default(),
    };
    for (k, v) in opts {
        match k {
            "size" => cfg.size = parse_size(v).map_err(|e| e.to_string())?,
            "dma_map" => {
                cfg.dma_map = match v {
                    "auto" => DmaMapTiming::Auto,
                    "background" => DmaMapTiming::Background,
                    "before-boot" => DmaMapTiming::BeforeBoot,
                    _ => {
                        return Err(format!(
                            "dma_map: {v:?} is not a timing; use auto (the default), \
                             background (map while the guest boots) or before-boot"
                        ))
                    }
                }
            }
            _ => cfg.hugepages = parse_on_off(v).map_err(|e| format!("hugepages: {e}"))?,
        }
    }
    // The layout owns the limits: the minimum a kernel needs here; the ceiling comes from
    // the host at start (CPU address width, IOMMU), so only what no host has is refused.
    crate::memory::MemoryLayout::with_limit(cfg.size, crate::memory::ARCH_PHYS_LIMIT)
        .map_err(|e| e.to_string())?;
    let align = if cfg.hugepages {
        HUGEPAGE_SIZE
    } else {
        PAGE_SIZE
    };
    if cfg.size % align != 0 {
        let unit = if cfg.hugepages {
            "2M (the hugepage size)"
        } else {
            "4K"
        };
        return Err(format!(
            "size must be a multiple of {unit}, e.g. {}M",
            cfg.size.div_ceil(2 << 20) * 2
        ));
    }
    Ok(cfg)
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    const FORMS: &str = "use tty, file=PATH, null or off";
    let opts = option_list::parse(s, &["mode", "file"]).map_err(|e| format!("{e}; {FORMS}"))?;
    match opts.as_slice() {
        [("mode", "tty")] => Ok(SerialConfig::Tty),
        [("mode", "off")] => Ok(SerialConfig::Off),
        [("mode", "null")] => Ok(SerialConfig::Null),
        [("file", p)] => Ok(SerialConfig::File(PathBuf::from(p))),
        _ => Err(FORMS.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn kernel_file() -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"not really a kernel").unwrap();
        f
    }

    fn args(kernel: &Path) -> VmArgs {
        VmArgs {
            kernel: Some(kernel.to_path_buf()),
            vfio_backend: "auto".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_boot_one_vcpu_512m_serial_tty() {
        let k = kernel_file();
        let c = VmConfig::from_args(&args(k.path())).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(
            c.memory,
            MemoryConfig {
                size: 512 << 20,
                hugepages: false,
                dma_map: DmaMapTiming::Auto,
            }
        );
        assert_eq!(c.serial, SerialConfig::Tty);
        assert!(c.cmdline.starts_with("console=ttyS0 "));
        assert!(c.cmdline.contains("reboot=k"));
        assert_eq!(c.vfio_backend, BackendChoice::Auto);
        assert_eq!(c.seccomp, SeccompMode::On);
    }

    #[test]
    fn explicit_values() {
        let k = kernel_file();
        let mut a = args(k.path());
        a.cpus = Some("boot=2".into());
        a.memory = Some("size=1G,hugepages=on,dma_map=before-boot".into());
        a.serial = Some("file=/tmp/x.log".into());
        a.cmdline = Some(" console=ttyS0 panic=-1 ".into());
        a.vfio_backend = "group".into();
        a.seccomp = Some("log".into());
        let c = VmConfig::from_args(&a).unwrap();
        assert_eq!(c.seccomp, SeccompMode::Log);
        assert_eq!(c.vcpus, 2);
        assert_eq!(
            c.memory,
            MemoryConfig {
                size: 1 << 30,
                hugepages: true,
                dma_map: DmaMapTiming::BeforeBoot,
            }
        );
        assert_eq!(c.serial, SerialConfig::File("/tmp/x.log".into()));
        assert_eq!(c.cmdline, "console=ttyS0 panic=-1");
        assert_eq!(c.vfio_backend, BackendChoice::Group);

        a.cpus = Some("3".into());
        a.memory = Some("768M".into());
        a.serial = Some("null".into());
        let c = VmConfig::from_args(&a).unwrap();
        assert_eq!(
            (c.vcpus, c.memory.size, c.memory.hugepages),
            (3, 768 << 20, false)
        );
        assert_eq!(c.serial, SerialConfig::Null);
    }

    fn err_for(f: impl FnOnce(&mut VmArgs)) -> String {
        let k = kernel_file();
        let mut a = args(k.path());
        f(&mut a);
        VmConfig::from_args(&a).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_the_option_and_the_fix() {
        let e = err_for(|a| a.memory = Some("size=12X".into()));
        assert!(
            e.starts_with("--memory 'size=12X':") && e.contains("512M"),
            "{e}"
        );
        let e = err_for(|a| a.memory = Some("size=1M".into()));
        assert!(e.contains("too small") && e.contains("32 MiB"), "{e}");
        let e = err_for(|a| a.memory = Some("size=8192T".into()));
        assert!(e.contains("too large"), "{e}");
        let e = err_for(|a| a.memory = Some("size=1025M,hugepages=on".into()));
        assert!(e.contains("multiple of 2M"), "{e}");
        for (vcpus, cores, want) in [
            (1, 2, DmaMapTiming::BeforeBoot),
            (1, 3, DmaMapTiming::Background),
            (8, 64, DmaMapTiming::Background),
            (4, 5, DmaMapTiming::BeforeBoot),
        ] {
            assert_eq!(
                DmaMapTiming::Auto.resolve(vcpus, cores),
                want,
                "{vcpus} on {cores}"
            );
        }
        assert_eq!(
            DmaMapTiming::Background.resolve(1, 1),
            DmaMapTiming::Background,
            "an explicit choice stays"
        );
        let e = err_for(|a| a.memory = Some("size=1G,dma_map=later".into()));
        assert!(
            e.contains("\"later\" is not a timing") && e.contains("before-boot"),
            "{e}"
        );
        let e = err_for(|a| a.memory = Some("size=1G,hugepages=maybe".into()));
        assert!(e.contains("not on or off"), "{e}");
        let e = err_for(|a| a.memory = Some("size=1G,numa=on".into()));
        assert!(
            e.contains("unknown option \"numa\"") && e.contains("size=SIZE"),
            "{e}"
        );
        let e = err_for(|a| a.cpus = Some("boot=0".into()));
        assert!(e.contains("between 1 and 254"), "{e}");
        let e = err_for(|a| a.cpus = Some("boot=300".into()));
        assert!(e.contains("between 1 and 254"), "{e}");
        let e = err_for(|a| a.cpus = Some("boot=two".into()));
        assert!(e.contains("not a whole number"), "{e}");
        let e = err_for(|a| a.cpus = Some("max=4".into()));
        assert!(e.contains("unknown option \"max\""), "{e}");
        let e = err_for(|a| a.serial = Some("pty".into()));
        assert!(e.contains("tty, file=PATH, null or off"), "{e}");
        let e = err_for(|a| a.serial = Some("file=".into()));
        assert!(e.contains("tty, file=PATH"), "{e}");
        let e = err_for(|a| a.device = vec!["00:01.0,colour=red".into()]);
        assert!(
            e.starts_with("--device \"00:01.0,colour=red\": unknown option \"colour\""),
            "{e}"
        );
        let e = err_for(|a| a.device = vec!["00:01.0,port=1".into()]);
        assert!(
            e.contains("port=1") && e.contains("pass --pcie-ports 1 or more"),
            "{e}"
        );
        let e = err_for(|a| {
            a.pcie_ports = Some("2".into());
            a.device = vec!["00:01.0,port=2".into(), "00:02.0,port=2".into()];
        });
        assert!(e.contains("already holds 00:01.0,port=2"), "{e}");
        let e = err_for(|a| a.device = vec![" ".into()]);
        assert!(e.contains("--device needs a value"), "{e}");
        let e = err_for(|a| a.vfio_backend = "vfio".into());
        assert!(e.contains("auto, iommufd or group"), "{e}");
        let e = err_for(|a| a.iommufd_fd = Some(-1));
        assert!(e.starts_with("--iommufd-fd"), "{e}");
        let e = err_for(|a| a.seccomp = Some("strict".into()));
        assert!(
            e.starts_with("--seccomp 'strict':") && e.contains("on (deny") && e.contains("off"),
            "{e}"
        );
        let e = err_for(|a| a.cmdline = Some("a\0b".into()));
        assert!(e.contains("NUL"), "{e}");
    }

    #[test]
    fn the_api_socket_is_checked_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let k = kernel_file();
        let mut a = args(k.path());
        a.api_socket = Some(format!("path={}", sock.display()));
        let c = VmConfig::from_args(&a).unwrap();
        assert_eq!(c.api_socket, Some(ApiSocketConfig::Path(sock.clone())));
        assert_eq!(
            VmConfig::from_args(&args(k.path())).unwrap().api_socket,
            None
        );
        let e = err_for(|a| a.api_socket = Some("path=/no/such/dir/api.sock".into()));
        assert!(
            e.starts_with("--api-socket 'path=/no/such/dir/api.sock': the directory")
                && e.contains("create it"),
            "{e}"
        );
        std::fs::write(&sock, b"not a socket").unwrap();
        let e = err_for(|a| a.api_socket = Some(sock.display().to_string()));
        assert!(e.contains("not a socket") && e.contains("remove it"), "{e}");
        let e = err_for(|a| a.api_socket = Some("fd=99999".into()));
        assert!(e.contains("not open in passvm"), "{e}");
        let e = err_for(|a| a.api_socket = Some("port=80".into()));
        assert!(
            e.contains("unknown option \"port\"") && e.contains("path=PATH"),
            "{e}"
        );
    }

    #[test]
    fn missing_files_are_reported_with_the_option() {
        let e = VmConfig::from_args(&args(Path::new("/no/such/vmlinux"))).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("--kernel /no/such/vmlinux: cannot read it"),
            "{msg}"
        );
        assert!(msg.contains("check the path"), "{msg}");

        let k = kernel_file();
        let mut a = args(k.path());
        a.initramfs = Some("/no/such/initrd".into());
        assert!(VmConfig::from_args(&a)
            .unwrap_err()
            .to_string()
            .starts_with("--initramfs"));

        let dir = tempfile::tempdir().unwrap();
        let e = VmConfig::from_args(&args(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");

        assert_eq!(
            VmConfig::from_args(&VmArgs::default()),
            Err(ConfigError::NoKernel)
        );
    }
}
