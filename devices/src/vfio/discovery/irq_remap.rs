//! Interrupt remapping: without it a device can forge MSIs, so both VFIO backends refuse
//! to attach a device unless an administrator opts in with a module parameter.
//!
//! Detection reads no kernel log. On x86 the interrupt chips of a kernel with remapping
//! on are named `IR-IO-APIC`, `IR-PCI-MSI-...`; sysfs lists them in
//! `/sys/kernel/irq/<n>/chip_name`. Elsewhere (ARM ITS, POWER) MSI isolation comes from
//! other hardware, so the state is reported as unknown instead of guessed.

use super::model::Backend;
use super::model::{Problem, ProblemKind};
use super::sysfs::{attr, dir_names, Roots};

/// What the host's interrupt chips say about remapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remapping {
    /// At least one interrupt goes through an `IR-` (remapping) chip.
    Present,
    /// x86 interrupt chips are listed and none remaps.
    Absent,
    /// No evidence either way.
    Unknown,
}

/// Remapping state plus the two opt-in parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptIsolation {
    /// What the interrupt chips say.
    pub remapping: Remapping,
    /// `vfio_iommu_type1.allow_unsafe_interrupts` (`None`: module not loaded).
    pub type1_unsafe_ok: Option<bool>,
    /// `iommufd.allow_unsafe_interrupts` (`None`: iommufd absent).
    pub iommufd_unsafe_ok: Option<bool>,
}

/// The module parameter that lets `backend` run without remapping.
pub fn unsafe_param(backend: Backend) -> &'static str {
    match backend {
        Backend::Group => "vfio_iommu_type1.allow_unsafe_interrupts",
        Backend::Iommufd => "iommufd.allow_unsafe_interrupts",
    }
}

fn param(roots: &Roots, module: &str) -> Option<bool> {
    attr(
        &roots.sys_path(format!("module/{module}/parameters")),
        "allow_unsafe_interrupts",
    )
    .map(|v| matches!(v.as_str(), "Y" | "y" | "1"))
}

/// Reads the remapping evidence and both parameters under `roots`.
pub fn detect(roots: &Roots) -> InterruptIsolation {
    let irq_dir = roots.sys_path("kernel/irq");
    let chips: Vec<String> = dir_names(&irq_dir)
        .iter()
        .filter_map(|n| attr(&irq_dir.join(n), "chip_name"))
        .collect();
    let remapping = if chips.iter().any(|c| c.starts_with("IR-")) {
        Remapping::Present
    } else if cfg!(target_arch = "x86_64")
        && chips
            .iter()
            .any(|c| c.contains("APIC") || c.contains("PCI-MSI"))
    {
        Remapping::Absent
    } else {
        Remapping::Unknown
    };
    InterruptIsolation {
        remapping,
        type1_unsafe_ok: param(roots, "vfio_iommu_type1"),
        iommufd_unsafe_ok: param(roots, "iommufd"),
    }
}

impl InterruptIsolation {
    fn allowed(&self, backend: Backend) -> Option<bool> {
        match backend {
            Backend::Group => self.type1_unsafe_ok,
            Backend::Iommufd => self.iommufd_unsafe_ok,
        }
    }

    /// One line for plans and listings.
    pub fn summary(&self, backend: Option<Backend>) -> String {
        let yn = |v: Option<bool>| match v {
            Some(true) => "Y",
            Some(false) => "N",
            None => "n/a",
        };
        let state = match self.remapping {
            Remapping::Present => "present",
            Remapping::Absent => "absent",
            Remapping::Unknown => "unknown (no x86 IR- interrupt chips to judge by)",
        };
        let params = match backend {
            Some(b) => format!("{}={}", unsafe_param(b), yn(self.allowed(b))),
            None => format!(
                "{}={}, {}={}",
                unsafe_param(Backend::Group),
                yn(self.type1_unsafe_ok),
                unsafe_param(Backend::Iommufd),
                yn(self.iommufd_unsafe_ok)
            ),
        };
        format!("interrupt remapping: {state}; {params}")
    }

    /// A problem when `backend` will refuse the device for lack of remapping.
    pub fn problem(&self, backend: Backend) -> Option<Problem> {
        if self.remapping != Remapping::Absent || self.allowed(backend) == Some(true) {
            return None;
        }
        let p = unsafe_param(backend);
        let (module, name) = p.split_once('.').unwrap_or((p, ""));
        Some(Problem {
            kind: ProblemKind::InterruptRemapping,
            reason: format!(
                "the IOMMU does no interrupt remapping, so the kernel will refuse the device ({p} is off)"
            ),
            fix: format!(
                "enable interrupt remapping (VT-d/AMD-Vi with x2APIC in the firmware; do not boot with \
                 intremap=off), or, if you accept that the guest can forge interrupts, boot with {p}=1 or \
                 `echo 1 > /sys/module/{module}/parameters/{name}`"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn roots(t: &tempfile::TempDir) -> Roots {
        Roots {
            sys: t.path().join("sys"),
            dev: t.path().join("dev"),
            state: t.path().join("run"),
            proc: t.path().join("proc"),
        }
    }

    fn chip(r: &Roots, n: u32, name: &str) {
        let d = r.sys_path(format!("kernel/irq/{n}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("chip_name"), format!("{name}\n")).unwrap();
    }

    fn set_param(r: &Roots, module: &str, v: &str) {
        let d = r.sys_path(format!("module/{module}/parameters"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("allow_unsafe_interrupts"), format!("{v}\n")).unwrap();
    }

    #[test]
    fn remapping_chips_mean_present() {
        let t = tempfile::tempdir().unwrap();
        let r = roots(&t);
        chip(&r, 0, "IR-IO-APIC");
        chip(&r, 24, "IR-PCI-MSI-0000:00:02.0");
        let i = detect(&r);
        assert_eq!(i.remapping, Remapping::Present);
        assert!(i.problem(Backend::Group).is_none());
    }

    #[test]
    fn absent_remapping_names_the_backend_parameter() {
        let t = tempfile::tempdir().unwrap();
        let r = roots(&t);
        chip(&r, 0, "IO-APIC");
        chip(&r, 24, "PCI-MSIX-0000:00:02.0");
        set_param(&r, "vfio_iommu_type1", "N");
        set_param(&r, "iommufd", "Y");
        let i = detect(&r);
        assert_eq!(i.remapping, Remapping::Absent);
        let p = i.problem(Backend::Group).unwrap().to_string();
        assert!(
            p.contains("vfio_iommu_type1.allow_unsafe_interrupts=1"),
            "{p}"
        );
        assert!(i.problem(Backend::Iommufd).is_none());
        let s = i.summary(None);
        assert!(
            s.contains("vfio_iommu_type1.allow_unsafe_interrupts=N"),
            "{s}"
        );
        assert!(s.contains("iommufd.allow_unsafe_interrupts=Y"), "{s}");
    }

    #[test]
    fn no_evidence_is_unknown_and_not_fatal() {
        let t = tempfile::tempdir().unwrap();
        let r = roots(&t);
        let i = detect(&r);
        assert_eq!(i.remapping, Remapping::Unknown);
        assert!(i.problem(Backend::Iommufd).is_none());
        assert!(i.summary(Some(Backend::Iommufd)).contains("unknown"));
    }
}
