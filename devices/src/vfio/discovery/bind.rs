//! Switching a PCI device to vfio-pci and back, remembering its original driver.
//!
//! The kernel's recipe: set `driver_override` to `vfio-pci` (so no other driver grabs the
//! device), unbind it from its driver, ask the PCI core to probe it again
//! (`drivers_probe`). Going back: unbind from vfio-pci, clear `driver_override` (writing
//! a newline clears it), bind to the recorded driver. The original driver and override
//! are written to `<state>/bind/<BDF>` *before* anything changes, so a crash in between
//! still leaves enough to restore.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};

use super::error::DiscoveryError;
use super::group::is_vfio_driver_name;
use super::host_use::host_uses;
use super::sysfs::{attr, link_name, Roots};
use crate::vfio::naming::Bdf;

/// Writes a sysfs control file. The real kernel acts on the write; tests substitute a
/// fake that performs the kernel's side effects on a temporary tree.
pub trait SysfsWriter {
    /// Writes `value` to `path`.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// Writes to the real sysfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelSysfs;

impl SysfsWriter for KernelSysfs {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // One write(2) per value: sysfs stores handle a single write per open.
        let mut f = fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(value.as_bytes())
    }
}

/// What `bind` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// The device was already on a VFIO driver; nothing changed.
    AlreadyBound {
        /// That driver.
        driver: String,
    },
    /// The device moved to vfio-pci.
    Bound {
        /// Its previous driver, if it had one.
        previous: Option<String>,
    },
}

/// What `unbind` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbindOutcome {
    /// The driver the device is on now (`None`: no driver).
    pub now: Option<String>,
    /// Whether a record of the original driver was found.
    pub had_record: bool,
}

/// The remembered state of a device before `bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    driver: Option<String>,
    driver_override: Option<String>,
}

fn record_path(roots: &Roots, bdf: &Bdf) -> PathBuf {
    roots.state.join("bind").join(bdf.to_string())
}

impl Record {
    fn encode(&self) -> String {
        format!(
            "driver={}\ndriver_override={}\n",
            self.driver.as_deref().unwrap_or(""),
            self.driver_override.as_deref().unwrap_or("")
        )
    }

    fn decode(s: &str) -> Record {
        let get = |key: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Record {
            driver: get("driver"),
            driver_override: get("driver_override"),
        }
    }
}

fn step_err(bdf: &Bdf, step: &str, e: impl std::fmt::Display, fix: &str) -> DiscoveryError {
    DiscoveryError::Bind {
        device: bdf.to_string(),
        step: step.to_string(),
        why: format!("{e}; {fix}"),
    }
}

const ROOT_FIX: &str = "binding needs root (sysfs driver files are root-only)";

fn device_dir(bdf: &Bdf, roots: &Roots) -> Result<PathBuf, DiscoveryError> {
    let dir = roots.sys_path(format!("bus/pci/devices/{bdf}"));
    if !dir.exists() {
        return Err(DiscoveryError::NotFound {
            given: bdf.to_string(),
            what: format!("PCI device {bdf}"),
            fix: "List the host's devices with `passvm devices`.".into(),
        });
    }
    Ok(dir)
}

fn override_value(dir: &Path) -> Option<String> {
    attr(dir, "driver_override").filter(|v| v != "(null)" && !v.is_empty())
}

/// Binds `bdf` to vfio-pci, recording its driver under `roots.state`. A device the host
/// still uses ([`host_uses`]: a mounted filesystem, an up interface with addresses, the
/// boot VGA, a console) is refused with the uses named, unless `force`.
pub fn bind(
    bdf: &Bdf,
    roots: &Roots,
    w: &dyn SysfsWriter,
    force: bool,
) -> Result<BindOutcome, DiscoveryError> {
    let dir = device_dir(bdf, roots)?;
    let current = link_name(&dir.join("driver"));
    if let Some(d) = current.as_deref().filter(|d| is_vfio_driver_name(d)) {
        return Ok(BindOutcome::AlreadyBound {
            driver: d.to_string(),
        });
    }
    let uses = host_uses(&dir, roots);
    if !uses.is_empty() {
        if !force {
            return Err(DiscoveryError::InUseByHost {
                device: bdf.to_string(),
                uses,
            });
        }
        warn!(
            "{bdf}: taken from the host although {} (--force)",
            uses.join("; ")
        );
    }
    if !dir.join("iommu_group").exists() {
        return Err(step_err(
            bdf,
            "check the IOMMU",
            "the device has no IOMMU group, and vfio-pci refuses such devices",
            "turn the IOMMU on (see `passvm devices` for how); nothing was changed",
        ));
    }
    if !roots.sys_path("bus/pci/drivers/vfio-pci").is_dir() {
        return Err(step_err(
            bdf,
            "find vfio-pci",
            "the vfio-pci driver is not loaded",
            "run `modprobe vfio-pci` (kernel option CONFIG_VFIO_PCI)",
        ));
    }
    let record = Record {
        driver: current.clone(),
        driver_override: override_value(&dir),
    };
    let rec_path = record_path(roots, bdf);
    let saved = rec_path
        .parent()
        .map(fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|_| fs::write(&rec_path, record.encode()));
    if let Err(e) = saved {
        return Err(step_err(
            bdf,
            &format!("record the original driver in {}", rec_path.display()),
            e,
            "check that the state directory is writable",
        ));
    }
    let name = bdf.to_string();
    w.write(&dir.join("driver_override"), "vfio-pci")
        .map_err(|e| step_err(bdf, "write driver_override", e, ROOT_FIX))?;
    if current.is_some() {
        w.write(&dir.join("driver/unbind"), &name)
            .map_err(|e| step_err(bdf, "unbind from its driver", e, ROOT_FIX))?;
    }
    w.write(&roots.sys_path("bus/pci/drivers_probe"), &name)
        .map_err(|e| step_err(bdf, "write drivers_probe", e, "see the kernel log (dmesg)"))?;
    match link_name(&dir.join("driver")).as_deref() {
        Some("vfio-pci") => {
            info!(
                "{bdf}: bound to vfio-pci (was {})",
                current.as_deref().unwrap_or("no driver")
            );
            Ok(BindOutcome::Bound { previous: current })
        }
        other => {
            let now = other.unwrap_or("no driver").to_string();
            // Do not leave the device without its driver: undo with the record.
            let undo = match unbind(bdf, roots, w) {
                Ok(o) => format!(
                    "it was given back to {}",
                    o.now.as_deref().unwrap_or("no driver")
                ),
                Err(e) => format!("giving it back failed too: {e}"),
            };
            Err(step_err(
                bdf,
                "probe with vfio-pci",
                format!("the device was on {now} afterwards; {undo}"),
                "see the kernel log (dmesg)",
            ))
        }
    }
}

/// Returns `bdf` to the driver recorded by [`bind`] (or lets the kernel choose when there
/// is no record) and clears `driver_override`.
pub fn unbind(
    bdf: &Bdf,
    roots: &Roots,
    w: &dyn SysfsWriter,
) -> Result<UnbindOutcome, DiscoveryError> {
    let dir = device_dir(bdf, roots)?;
    let rec_path = record_path(roots, bdf);
    let record = fs::read_to_string(&rec_path)
        .ok()
        .map(|s| Record::decode(&s));
    let name = bdf.to_string();
    if link_name(&dir.join("driver")).is_some() {
        w.write(&dir.join("driver/unbind"), &name)
            .map_err(|e| step_err(bdf, "unbind from its driver", e, ROOT_FIX))?;
    }
    let restore_override = record
        .as_ref()
        .and_then(|r| r.driver_override.clone())
        .unwrap_or_else(|| "\n".into());
    w.write(&dir.join("driver_override"), &restore_override)
        .map_err(|e| step_err(bdf, "reset driver_override", e, ROOT_FIX))?;
    match record.as_ref().map(|r| r.driver.as_deref()) {
        // Recorded as driverless: leave it so.
        Some(None) => {}
        Some(Some(orig)) if roots.sys_path(format!("bus/pci/drivers/{orig}")).is_dir() => {
            w.write(
                &roots.sys_path(format!("bus/pci/drivers/{orig}/bind")),
                &name,
            )
            .map_err(|e| {
                step_err(
                    bdf,
                    &format!("bind to {orig}"),
                    e,
                    "see the kernel log (dmesg)",
                )
            })?;
        }
        // The original driver went away (module unloaded) or nothing was recorded:
        // let the PCI core pick, as at boot.
        _ => {
            w.write(&roots.sys_path("bus/pci/drivers_probe"), &name)
                .map_err(|e| step_err(bdf, "write drivers_probe", e, "see the kernel log"))?;
        }
    }
    if record.is_some() {
        if let Err(e) = fs::remove_file(&rec_path) {
            warn!("{}: could not remove {}: {e}", bdf, rec_path.display());
        }
    }
    let now = link_name(&dir.join("driver"));
    if let Some(Some(orig)) = record.as_ref().map(|r| r.driver.as_deref()) {
        if now.as_deref() != Some(orig) {
            return Err(step_err(
                bdf,
                &format!("restore {orig}"),
                format!("the device is on {} afterwards", now.as_deref().unwrap_or("no driver")),
                &format!("load the driver (modprobe) and run `echo {bdf} > /sys/bus/pci/drivers/{orig}/bind`"),
            ));
        }
    }
    Ok(UnbindOutcome {
        now,
        had_record: record.is_some(),
    })
}

/// `managed=on`: binds a device to vfio-pci for as long as this value lives and restores
/// the original driver when it is dropped (every exit path that unwinds or returns).
/// A device that was already on a VFIO driver is left alone in both directions.
pub struct ManagedBinding {
    bdf: Bdf,
    roots: Roots,
    writer: Box<dyn SysfsWriter + Send + Sync>,
    restore: bool,
}

impl std::fmt::Debug for ManagedBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedBinding")
            .field("bdf", &self.bdf)
            .field("restore", &self.restore)
            .finish()
    }
}

impl ManagedBinding {
    /// Binds `bdf` to vfio-pci through the real sysfs (refused while the host uses
    /// it, unless `force`: [`bind`]).
    pub fn new(bdf: Bdf, roots: &Roots, force: bool) -> Result<Self, DiscoveryError> {
        Self::with_writer(bdf, roots, Box::new(KernelSysfs), force)
    }

    /// Binds through a given writer (tests).
    pub fn with_writer(
        bdf: Bdf,
        roots: &Roots,
        writer: Box<dyn SysfsWriter + Send + Sync>,
        force: bool,
    ) -> Result<Self, DiscoveryError> {
        let outcome = bind(&bdf, roots, writer.as_ref(), force)?;
        Ok(ManagedBinding {
            bdf,
            roots: roots.clone(),
            writer,
            restore: matches!(outcome, BindOutcome::Bound { .. }),
        })
    }

    /// The device.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }
}

impl Drop for ManagedBinding {
    fn drop(&mut self) {
        if !self.restore {
            return;
        }
        match unbind(&self.bdf, &self.roots, self.writer.as_ref()) {
            Ok(o) => info!(
                "{}: restored to {}",
                self.bdf,
                o.now.as_deref().unwrap_or("no driver")
            ),
            Err(e) => warn!("{}: could not restore its driver: {e}", self.bdf),
        }
    }
}
