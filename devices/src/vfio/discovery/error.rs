//! Discovery errors: each says what is wrong and how to fix it.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::model::Problem;
use crate::vfio::naming::NamingError;

/// Exit code for anything the user can fix: a bad `--device`, a device that cannot be
/// assigned, a backend that cannot work. Same as clap's usage errors.
pub const EXIT_USER: u8 = 2;
/// Exit code for an unexpected host failure (a sysfs write the kernel refused, ...).
pub const EXIT_HOST: u8 = 1;

/// Why a device could not be resolved, planned, bound or unbound.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    /// The `--device` string is malformed.
    #[error(transparent)]
    Naming(#[from] NamingError),
    /// The name is well-formed but nothing on this host has it.
    #[error("{given}: {what} does not exist. {fix}")]
    NotFound {
        /// What the user gave.
        given: String,
        /// What was looked for (host view).
        what: String,
        /// How to find the right name.
        fix: String,
    },
    /// The name resolved to something that is not a usable device.
    #[error("{given}: {why}")]
    Unusable {
        /// What the user gave.
        given: String,
        /// What it is and what to give instead.
        why: String,
    },
    /// A `/dev/vfio/devices/vfioN` node whose major:minor is not the one sysfs
    /// registers for that name: left over from an earlier boot, or another device.
    #[error("{given}: the node is {node_dev} but sysfs registers {name} as {sysfs_dev}; it is stale or belongs to another device. Use the node the kernel created (devtmpfs), or name the device by its PCI address")]
    StaleCdev {
        /// What the user gave.
        given: String,
        /// The cdev name.
        name: String,
        /// `MAJ:MIN` of the node.
        node_dev: String,
        /// `MAJ:MIN` in sysfs.
        sysfs_dev: String,
    },
    /// A `/dev/vfio/<bus>/<name>` link that does not lead to that device's own cdev:
    /// dangling, to something that is not a VFIO cdev, or to another device's cdev.
    #[error("{}", bad_link_text(.given, .link, .why))]
    BadLink {
        /// What the user gave.
        given: String,
        /// The link (host view).
        link: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// `fd=N` is not a usable VFIO cdev fd.
    #[error("fd={fd}: {why}")]
    BadFd {
        /// The descriptor.
        fd: i32,
        /// What is wrong and what the launcher should pass.
        why: String,
    },
    /// The same device is named twice.
    #[error("{device} is named twice (by {first:?} and {second:?}); give each device once")]
    Duplicate {
        /// The device (BDF or UUID).
        device: String,
        /// The first `--device`.
        first: String,
        /// The second `--device`.
        second: String,
    },
    /// `--vfio-backend` has a value that is not known.
    #[error("--vfio-backend {0:?}: expected auto, iommufd or group")]
    BadBackendName(String),
    /// The requested backend cannot work on this host or with these devices.
    #[error("--vfio-backend {backend} cannot be used: {why}")]
    BackendUnavailable {
        /// The requested backend.
        backend: &'static str,
        /// Why, and what would make it work.
        why: String,
    },
    /// One or more devices fail an assignability check.
    #[error("{}", not_assignable_text(.problems))]
    NotAssignable {
        /// `(device, problem)` pairs.
        problems: Vec<(String, Problem)>,
    },
    /// A bind or unbind step failed.
    #[error("{device}: {step}: {why}")]
    Bind {
        /// The device.
        device: String,
        /// The step (e.g. "write driver_override").
        step: String,
        /// What went wrong and the fix.
        why: String,
    },
    /// The host still uses the device (`bind`, `managed=on`); nothing was changed.
    #[error(
        "{device}: the host is using it: {}; nothing was changed. Free it first, or take \
         it anyway with `passvm bind --force` or managed=force",
        uses.join("; ")
    )]
    InUseByHost {
        /// The device.
        device: String,
        /// Each use, with what frees it.
        uses: Vec<String>,
    },
    /// An unexpected I/O failure on a host file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn bad_link_text(given: &str, link: &Path, why: &str) -> String {
    // The link is usually the very path given; name it only when it is not.
    let which = if Path::new(given) == link {
        "the link".to_string()
    } else {
        format!("the link {}", link.display())
    };
    format!(
        "{given}: {which} {why}; passvm does not follow it. Fix: {}",
        super::links::LinkState::fix(link)
    )
}

fn not_assignable_text(problems: &[(String, Problem)]) -> String {
    let mut s = String::from("not assignable: ");
    if problems.len() > 1 {
        s.push_str(&format!("{} problems:", problems.len()));
        for (dev, p) in problems {
            s.push_str(&format!("\n  {dev}: {p}"));
        }
    } else if let Some((dev, p)) = problems.first() {
        s.push_str(&format!("{dev}: {p}"));
    }
    s
}

impl DiscoveryError {
    /// The process exit code for this error: [`EXIT_USER`] (2) for anything the user
    /// can fix, [`EXIT_HOST`] (1) for unexpected host I/O failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            DiscoveryError::Io { .. } => EXIT_HOST,
            DiscoveryError::Bind { .. } => EXIT_HOST,
            _ => EXIT_USER,
        }
    }
}
