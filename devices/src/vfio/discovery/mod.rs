//! Host device discovery: from parsed `--device` values to checked devices and a VFIO
//! backend.
//!
//! # For the VMM core (`--device`, `--vfio-backend`, `--iommufd-fd`, `--dry-run`)
//!
//! ```no_run
//! use devices::vfio::discovery::{plan, BackendChoice, Roots};
//! use devices::vfio::naming::DeviceSpec;
//! # fn run(device: Vec<String>, vfio_backend: &str, iommufd_fd: Option<i32>, ram: u64, dry_run: bool)
//! #     -> Result<(), devices::vfio::discovery::DiscoveryError> {
//! // The config step parses every --device once (bad syntax fails there).
//! let specs = device.iter().map(|d| d.parse::<DeviceSpec>()).collect::<Result<Vec<_>, _>>()?;
//! let choice: BackendChoice = vfio_backend.parse()?;          // auto | iommufd | group
//! let p = plan(&specs, choice, iommufd_fd, ram, &Roots::host())?;
//! print!("{p}");                                               // one line per device + notes
//! if dry_run { return Ok(()); }
//! // managed=on devices: bind now, keep the guards until the VM is gone (Drop restores).
//! let (_guards, p) = if p.needs_binding() { p.bind_managed()? } else { (Vec::new(), p) };
//! for d in &p.devices { /* open d.cdev / d.fd (iommufd) or d.sysfs (group) per p.backend() */ }
//! # Ok(()) }
//! ```
//!
//! Every [`DiscoveryError`] carries its exit code ([`DiscoveryError::exit_code`]): 2 for
//! anything the user can fix (bad name, device not assignable, backend impossible),
//! 1 for an unexpected host failure. Its `Display` is the whole message, fix included.
//!
//! The sysfs and `/dev` roots are parameters ([`Roots`]) so that everything here runs
//! against a fake tree in unit tests.

pub(crate) mod assignable;
pub(crate) mod backend_choice;
pub(crate) mod bind;
pub mod class_names;
pub(crate) mod error;
pub mod group;
pub mod host_use;
pub mod inventory;
pub mod irq_remap;
pub mod links;
pub(crate) mod model;
pub(crate) mod plan;
pub(crate) mod resolve;
pub mod sysfs;

#[cfg(test)]
mod fake_tree;
#[cfg(test)]
mod tests;

pub use backend_choice::{BackendChoice, BackendDecision};
pub use bind::{bind, unbind, BindOutcome, KernelSysfs, ManagedBinding, UnbindOutcome};
pub use error::DiscoveryError;
pub use inventory::{inventory, Inventory};
pub use model::{Backend, Cdev, DeviceKind, Problem, ProblemKind, ResolvedDevice};
pub use plan::{plan, plan_with_limits, Plan};
pub use resolve::resolve;
pub use sysfs::Roots;
