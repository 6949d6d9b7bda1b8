//! Command-line definitions (clap). Nothing here outlives parsing: `config.rs`
//! turns these raw values into a validated [`crate::config::VmConfig`].

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  Boot a guest with 2 vCPUs and 1 GiB of RAM, passing a PCI device through:
    passvm --kernel vmlinux --initramfs initrd.cpio.gz --cmdline \"console=ttyS0\" \\
           --cpus boot=2 --memory size=1G --device /dev/vfio/pci/0000:0a:03.1

  The same device, named other ways:
    --device 0000:0a:03.1                      (bare BDF; 0a:03.1 implies domain 0)
    --device /sys/bus/pci/devices/0000:0a:03.1 (sysfs path)
    --device /dev/vfio/devices/vfio3           (VFIO device cdev, iommufd backend)
    --device /dev/vfio/7                       (a whole IOMMU group; add ,bdf=... to narrow)
    --device /sys/bus/mdev/devices/<uuid>      (a mediated device)
    --device path=0000:0a:03.1,id=disk0,managed=on

  List devices and whether they can be assigned, then bind one to vfio-pci:
    passvm devices
    passvm bind 0000:0a:03.1
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

    /// Kernel command line.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,

    /// vCPUs: boot=N.
    #[arg(long, value_name = "boot=N")]
    pub cpus: Option<String>,

    /// Guest RAM: size=SIZE[,hugepages=on|off] (SIZE like 512M, 2G).
    #[arg(long, value_name = "size=SIZE[,hugepages=on]")]
    pub memory: Option<String>,

    /// Guest serial port (COM1): tty (stdin/stdout), file=PATH, or off.
    #[arg(long, value_name = "tty|file=PATH|off")]
    pub serial: Option<String>,

    /// A device to pass through (repeatable): PATH or path=PATH[,id=NAME][,bdf=BDF][,managed=on] or fd=N.
    #[arg(long, value_name = "DEVICE")]
    pub device: Vec<String>,

    /// VFIO backend: auto (iommufd when every device has a cdev, else groups), iommufd or group.
    #[arg(long, value_name = "auto|iommufd|group", default_value = "auto")]
    pub vfio_backend: String,

    /// A /dev/iommu file descriptor opened by a privileged launcher (used with --device fd=N).
    #[arg(long, value_name = "FD")]
    pub iommufd_fd: Option<i32>,

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
    },
    /// Return a PCI device to the driver it had before `passvm bind`.
    Unbind {
        /// PCI address (DDDD:BB:DD.F or BB:DD.F).
        bdf: String,
    },
}
