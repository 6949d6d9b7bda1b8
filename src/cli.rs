//! Command-line definitions (clap) and the small parsers for cloud-hypervisor style
//! option lists (`size=1G,hugepages=on`). Nothing here outlives parsing: `config.rs`
//! turns these raw values into a validated [`crate::config::VmConfig`].

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  Boot a kernel with the defaults (1 vCPU, 512 MiB, serial console on this terminal):
    passvm --kernel vmlinux

  2 vCPUs, 1 GiB on 2 MiB hugepages, an initramfs and an explicit command line:
    passvm --kernel bzImage --initramfs initrd.cpio.gz --cpus boot=2 \\
           --memory size=1G,hugepages=on --cmdline \"console=ttyS0 reboot=k panic=1 rdinit=/init\"

  Keep the guest console in a file instead of the terminal:
    passvm --kernel vmlinux --serial file=/tmp/guest.log

  Pass a PCI device through (see `passvm devices` for what can be assigned):
    passvm --kernel vmlinux --memory size=1G --device 0000:0a:03.1

  The same device, named other ways:
    --device 0000:0a:03.1                      (bare BDF; 0a:03.1 implies domain 0)
    --device /sys/bus/pci/devices/0000:0a:03.1 (sysfs path)
    --device /dev/vfio/devices/vfio3           (VFIO device cdev, iommufd backend)
    --device /dev/vfio/7                       (a whole IOMMU group; add ,bdf=... to narrow)
    --device /sys/bus/mdev/devices/<uuid>      (a mediated device)
    --device path=0000:0a:03.1,id=disk0,managed=on

  Where the guest sees it, and its expansion ROM (a GPU's VBIOS from a file):
    --device 0000:0a:00.0,addr=05,romfile=/srv/vbios.rom --device 0000:0a:00.1
    (functions of one host slot stay together: the audio function lands at 05.1)

  Check what a command line would do without starting the VM:
    passvm --kernel vmlinux --device 0000:0a:03.1 --dry-run

  Control the running VM over HTTP/1.1 + JSON on a Unix socket (docs/api.md):
    passvm --kernel vmlinux --device 0000:0a:03.1,id=nic --api-socket path=/run/vm0.sock
    passvm remote --api-socket /run/vm0.sock info           (state, config, devices)
    passvm remote --api-socket /run/vm0.sock power-button   (the guest shuts down)

  List devices and whether they can be assigned, then bind one to vfio-pci:
    passvm devices
    passvm bind 0000:0a:03.1

  Give every VFIO device a per-bus name any program can open (/dev/vfio/pci/0000:0a:03.1):
    sudo passvm udev install                 (remove: sudo passvm udev remove)

The console: with --serial tty on a terminal, the terminal is in raw mode and every key,
Ctrl-C included, goes to the guest; end the VM from the guest (reboot, poweroff), with
SIGTERM (at once), or with SIGPWR (presses the guest's ACPI power button: a clean shutdown
if the guest's userspace handles it).

Exit status of a VM run:
    0    the guest rebooted (reboot: ACPI or i8042 reset) or powered off (ACPI S5),
         or the API stopped the VM (vm.shutdown, vmm.shutdown)
    1    passvm failed (setup error, KVM entry failure, vCPU error)
    2    bad command line, or a --device that cannot be assigned (the message says why)
    3    the guest triple-faulted
    4    the guest kernel panicked (\"Kernel panic - not syncing\" seen on its serial
         console, or a KVM crash event)
    6    a passed-through device reported an error (PCIe AER through VFIO); the
         message names the device, the host's dmesg has the AER report
    5    a passvm thread made a system call its seccomp filter denies (a passvm bug;
         the message names the thread and the call; --seccomp log lets the VM run on)
    129, 130, 143  stopped by SIGHUP, SIGINT, SIGTERM (128 + the signal number)
";

/// passvm: a KVM virtual machine monitor built for PCI device passthrough with VFIO.
#[derive(Debug, Parser)]
#[command(name = "passvm", version, about, after_help = EXAMPLES, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Host-side helper commands (device listing and binding).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options describing the VM to run.
    #[command(flatten)]
    pub vm: VmArgs,
}

/// The VM options, cloud-hypervisor style (`--cpus boot=2`, `--memory size=1G`).
#[derive(Debug, Args, Default, Clone)]
pub struct VmArgs {
    /// Guest kernel: an uncompressed ELF `vmlinux` (PVH entry) or a `bzImage`.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<std::path::PathBuf>,

    /// Initial ramdisk loaded next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<std::path::PathBuf>,

    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux
    /// i8042.dumbkbd"].
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,

    /// vCPUs: boot=N (or just N) [default: boot=1].
    #[arg(long, value_name = "boot=N")]
    pub cpus: Option<String>,

    /// Guest RAM: size=SIZE[,hugepages=on|off][,dma_map=auto|background|before-boot], SIZE
    /// in bytes or with a K, M, G or T suffix (512M, 2G); a bare SIZE is accepted too
    /// [default: size=512M]. With passthrough devices, RAM is pinned and mapped for them
    /// while the guest boots (dma_map=background: a device's bus mastering waits for it)
    /// or before the guest starts (dma_map=before-boot); auto (the default) maps in the
    /// background when the host has a core to spare beyond the vCPUs and the VMM.
    #[arg(long, value_name = "size=SIZE[,hugepages=on][,dma_map=...]")]
    pub memory: Option<String>,

    /// Guest serial port (COM1): tty (this terminal: output to stdout, input from stdin),
    /// file=PATH (output appended, no input), null (output discarded) or off (no port; no
    /// guest-panic detection either) [default: tty].
    #[arg(long, value_name = "tty|file=PATH|null|off")]
    pub serial: Option<String>,

    /// A device to pass through (repeatable): PATH or path=PATH[,id=NAME][,bdf=BDF][,managed=on]
    /// [,addr=SLOT[.FN]][,rombar=off][,romfile=PATH] or fd=N.
    #[arg(long, value_name = "DEVICE")]
    pub device: Vec<String>,

    /// VFIO backend: auto (iommufd when every device has a cdev, else groups), iommufd or group.
    #[arg(long, value_name = "auto|iommufd|group", default_value = "auto")]
    pub vfio_backend: String,

    /// A /dev/iommu file descriptor opened by a privileged launcher (used with --device fd=N).
    #[arg(long, value_name = "FD")]
    pub iommufd_fd: Option<i32>,

    /// The control API (docs/api.md): HTTP/1.1 + JSON on a Unix socket, path=PATH (passvm
    /// creates it with mode 0600 and removes it at exit; a stale socket nobody listens on
    /// is replaced) or fd=N (a listening socket passed by a launcher). `passvm remote`
    /// talks to it.
    #[arg(long, value_name = "path=PATH|fd=N")]
    pub api_socket: Option<String>,

    /// seccomp filters, one per kind of thread (vCPUs, the event loop, the DMA map
    /// helper), each allowing only the system calls that thread makes: on (another call
    /// stops passvm with exit status 5, naming the thread and the call), log (allowed, and
    /// logged by the kernel: audit type 1326) or off [default: on].
    #[arg(long, value_name = "on|log|off")]
    pub seccomp: Option<String>,

    /// PCIe root ports for devices added while the guest runs, each with a native
    /// hot-plug slot the guest's pciehp drives (0-8) [default: 0].
    #[arg(long, value_name = "N")]
    pub pcie_ports: Option<String>,

    /// Resolve devices, print the plan (devices, backend, memory layout) and exit without running the VM.
    #[arg(long)]
    pub dry_run: bool,
}

/// Host-side helper commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List PCI and mediated devices and whether each can be assigned to a VM.
    Devices {
        /// Include devices that are not normally passed through (bridges, host controllers).
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Bind a PCI device to vfio-pci, remembering its current driver.
    Bind {
        /// PCI address (DDDD:BB:DD.F or BB:DD.F).
        bdf: String,
        /// Bind even while the host uses the device (a mounted filesystem on it, an up
        /// network interface with addresses, the boot VGA, a console).
        #[arg(long)]
        force: bool,
    },
    /// Return a PCI device to the driver it had before `passvm bind`.
    Unbind {
        /// PCI address (DDDD:BB:DD.F or BB:DD.F).
        bdf: String,
    },
    /// The udev rule that links /dev/vfio/<bus>/<name> (e.g. /dev/vfio/pci/0000:0a:03.1)
    /// to each VFIO device cdev, so any program can open a device by its bus and name.
    Udev {
        /// What to do with the rule.
        #[command(subcommand)]
        action: UdevAction,
    },
    /// Ask a running passvm's control API (its --api-socket) and print the JSON answer.
    ///
    /// Exit status: 0 when the API did it, 1 when it answered with an error (the error and
    /// its fix on stderr, the JSON body on stdout), 2 for a usage error or when nothing
    /// answers on the socket.
    Remote {
        /// The socket of the passvm to ask (what it was given as --api-socket path=PATH).
        #[arg(long, value_name = "PATH")]
        api_socket: String,
        /// What to ask.
        #[command(subcommand)]
        action: RemoteAction,
    },
}

/// What `passvm udev` does (docs/devices.md, "The udev rule").
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum UdevAction {
    /// Write the rule to the rules directory, reload udev and replay the VFIO cdevs'
    /// events, so every bound device gets its link now (as root).
    Install {
        /// The udev rules directory.
        #[arg(long, value_name = "DIR", default_value = "/etc/udev/rules.d")]
        rules_dir: std::path::PathBuf,
    },
    /// Remove the rule and make udev drop the links it made (as root).
    Remove {
        /// The udev rules directory.
        #[arg(long, value_name = "DIR", default_value = "/etc/udev/rules.d")]
        rules_dir: std::path::PathBuf,
    },
    /// Print the rule (to install it by hand or ship it in a package).
    Rule,
}

/// What `passvm remote` asks (each is one endpoint of docs/api.md).
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum RemoteAction {
    /// passvm's version and process id (GET /api/v1/vmm.ping).
    Ping,
    /// The VM's state, configuration and devices, with each device's guest and host
    /// address (GET /api/v1/vm.info).
    Info,
    /// Hot-plug a device into a free PCIe root port slot (PUT /api/v1/vm.add-device).
    AddDevice {
        /// Any value --device takes (0000:0a:03.1,id=nic; /dev/vfio/devices/vfio3; ...);
        /// fd=N sends this process's open descriptor N (a VFIO cdev) with the request.
        #[arg(value_name = "DEVICE")]
        device: String,
    },
    /// Unplug a device (PUT /api/v1/vm.remove-device).
    RemoveDevice {
        /// The device's id: id=ID or ID (`passvm remote info` lists them).
        #[arg(value_name = "id=ID")]
        id: String,
    },
    /// Press the guest's ACPI power button; passvm exits when the guest has powered off
    /// (PUT /api/v1/vm.power-button).
    PowerButton,
    /// Stop the VM now, without asking the guest; passvm exits 0 (PUT
    /// /api/v1/vm.shutdown, or vmm.shutdown with --vmm).
    Shutdown {
        /// Ask for vmm.shutdown (in passvm the same: the process is the VM).
        #[arg(long)]
        vmm: bool,
    },
}

/// A value of an option list that is not what its key takes (the list itself is read by
/// [`devices::option_list`]). The message names the bad part and the
/// accepted form, so it can be shown to the user as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    /// A value that is not a size.
    #[error("'{0}' is not a size: use bytes or a number with K, M, G or T (e.g. 512M, 2G)")]
    Size(String),
    /// A value that is not on/off.
    #[error("'{0}' is not on or off")]
    OnOff(String),
    /// A value that is not a whole number.
    #[error("'{0}' is not a whole number")]
    Number(String),
}

/// Parses `512M`, `2G`, `1024K`, `1T` or plain bytes (binary multiples; `MiB`/`MB` spellings
/// mean the same as `M`).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let bad = || ValueError::Size(s.to_string());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(bad());
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Parses `on`/`off` (also `true`/`false`).
pub fn parse_on_off(s: &str) -> Result<bool, ValueError> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(ValueError::OnOff(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("passvm").chain(args.iter().copied()))
    }

    #[test]
    fn vm_options_parse_into_raw_strings() {
        let c = cli(&[
            "--kernel",
            "vmlinux",
            "--cpus",
            "boot=2",
            "--memory",
            "size=1G,hugepages=on",
            "--serial",
            "off",
            "--device",
            "0000:00:04.0",
            "--device",
            "/dev/vfio/7",
        ])
        .unwrap();
        assert!(c.command.is_none());
        assert_eq!(
            c.vm.kernel.as_deref(),
            Some(std::path::Path::new("vmlinux"))
        );
        assert_eq!(c.vm.cpus.as_deref(), Some("boot=2"));
        assert_eq!(c.vm.memory.as_deref(), Some("size=1G,hugepages=on"));
        assert_eq!(c.vm.device, vec!["0000:00:04.0", "/dev/vfio/7"]);
        assert_eq!(c.vm.vfio_backend, "auto");
    }

    #[test]
    fn subcommands_and_vm_options_do_not_mix() {
        assert!(matches!(
            cli(&["devices", "--json"]).unwrap().command,
            Some(Command::Devices {
                json: true,
                all: false
            })
        ));
        assert!(cli(&["--kernel", "k", "devices"]).is_err());
        assert!(cli(&["--kernel"]).is_err(), "--kernel needs a value");
        assert!(cli(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn help_lists_examples_and_exit_codes() {
        let help = cli(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("passvm --kernel vmlinux"));
        assert!(help.contains("stopped by SIGHUP, SIGINT, SIGTERM"));
        assert!(help.contains("--seccomp <on|log|off>"), "{help}");
        assert!(help.contains("seccomp filter denies"));
    }

    #[test]
    fn udev_commands_parse() {
        let udev = |args: &[&str]| {
            let mut all = vec!["udev"];
            all.extend_from_slice(args);
            match cli(&all).map(|c| c.command) {
                Ok(Some(Command::Udev { action })) => Ok(action),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(
            udev(&["install"]).unwrap(),
            UdevAction::Install {
                rules_dir: "/etc/udev/rules.d".into()
            }
        );
        assert_eq!(
            udev(&["remove", "--rules-dir", "/run/udev/rules.d"]).unwrap(),
            UdevAction::Remove {
                rules_dir: "/run/udev/rules.d".into()
            }
        );
        assert_eq!(udev(&["rule"]).unwrap(), UdevAction::Rule);
        assert!(udev(&[]).is_err(), "an action is needed");
        assert!(udev(&["reload"]).is_err());
        let help = cli(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("sudo passvm udev install"), "{help}");
    }

    #[test]
    fn remote_commands_parse() {
        let remote = |args: &[&str]| {
            let mut all = vec!["remote", "--api-socket", "/run/vm.sock"];
            all.extend_from_slice(args);
            match cli(&all).map(|c| c.command) {
                Ok(Some(Command::Remote { api_socket, action })) => {
                    assert_eq!(api_socket, "/run/vm.sock");
                    Ok(action)
                }
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(remote(&["ping"]).unwrap(), RemoteAction::Ping);
        assert_eq!(remote(&["info"]).unwrap(), RemoteAction::Info);
        assert_eq!(
            remote(&["add-device", "0a:03.1,id=nic"]).unwrap(),
            RemoteAction::AddDevice {
                device: "0a:03.1,id=nic".into()
            }
        );
        assert_eq!(
            remote(&["remove-device", "id=nic"]).unwrap(),
            RemoteAction::RemoveDevice {
                id: "id=nic".into()
            }
        );
        assert_eq!(
            remote(&["power-button"]).unwrap(),
            RemoteAction::PowerButton
        );
        assert_eq!(
            remote(&["shutdown", "--vmm"]).unwrap(),
            RemoteAction::Shutdown { vmm: true }
        );
        assert!(remote(&["reboot"]).is_err());
        assert!(remote(&["add-device"]).is_err(), "a device is needed");
        assert!(cli(&["remote", "ping"]).is_err(), "--api-socket is needed");
        let c = cli(&["--kernel", "k", "--api-socket", "path=/run/vm.sock"]).unwrap();
        assert_eq!(c.vm.api_socket.as_deref(), Some("path=/run/vm.sock"));
        let help = cli(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("--api-socket <path=PATH|fd=N>"), "{help}");
        assert!(help.contains("passvm remote --api-socket"), "{help}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1024K"), Ok(1 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in [
            "",
            "M",
            "1.5G",
            "-1G",
            "12Q",
            "1 G G",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn on_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("yes").is_err());
    }
}
