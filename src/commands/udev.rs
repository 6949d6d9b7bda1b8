//! `passvm udev install|remove|rule`: the udev rule that gives every VFIO device cdev a
//! per-bus name, `/dev/vfio/<bus>/<name>` → `../devices/vfioN`, for every program on
//! the host (docs/devices.md, "The udev rule").
//!
//! The rule text is `resources/udev/70-passvm-vfio.rules`, compiled in, so the file
//! shipped in the repository and the one installed are the same bytes. After writing
//! or removing it, udev is told to reload its rules and to replay the events of the
//! existing cdevs, so links appear (or go) at once rather than at the next bind.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use devices::vfio::discovery::links::{self, LinkState};
use devices::vfio::discovery::sysfs::{dir_names, Roots};
use thiserror::Error;

use crate::cli::UdevAction;

/// The rule, byte for byte as shipped in `resources/udev/`.
pub const RULE: &str = include_str!("../../resources/udev/70-passvm-vfio.rules");
/// Its file name; the number orders it after the distribution's own rules (50-60), so
/// nothing later renames the cdev under it.
pub const RULE_FILE: &str = "70-passvm-vfio.rules";

/// Why `passvm udev` failed; each message ends with what to do.
#[derive(Debug, Error)]
pub enum UdevError {
    /// The rules directory does not exist.
    #[error(
        "{}: no such directory, so udev does not seem to be installed here. Install it \
         (Debian/Ubuntu: apt install udev; Fedora: dnf install systemd-udev), or give the \
         directory your udev reads with --rules-dir",
        .0.display()
    )]
    NoRulesDir(PathBuf),
    /// Writing or removing the rule file failed.
    #[error("{}: {source}{}", path.display(), permission_hint(source))]
    File {
        /// The file.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// There is no `udevadm` to reload the rules with.
    #[error(
        "{done}, but there is no udevadm on PATH (nor in /usr/bin, /bin, /usr/sbin, /sbin) \
         to tell udev: udev is not installed or not running. Install and start it (it is \
         systemd-udevd), then run `udevadm control --reload && udevadm trigger \
         --subsystem-match=vfio-dev --action=add`"
    )]
    NoUdevadm {
        /// What was done before that.
        done: String,
    },
    /// `udevadm` ran and failed.
    #[error(
        "{done}, but `udevadm {args}` failed: {why}. Is systemd-udevd running? Start it \
         (systemctl start systemd-udevd, or /lib/systemd/systemd-udevd --daemon) and rerun"
    )]
    Udevadm {
        /// What was done before that.
        done: String,
        /// The arguments.
        args: String,
        /// Its exit status and error output.
        why: String,
    },
}

fn permission_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        "; udev rules belong to root: run it as root (sudo passvm udev ...)"
    } else {
        ""
    }
}

/// Where the rule goes and which udevadm tells udev: the host's by default, a
/// temporary tree in tests.
pub struct UdevHost {
    /// The rules directory.
    pub rules_dir: PathBuf,
    /// `udevadm`, when there is one.
    pub udevadm: Option<PathBuf>,
    /// sysfs and /dev, for the report of the links.
    pub roots: Roots,
}

impl UdevHost {
    /// This host: `rules_dir` (the CLI's default is /etc/udev/rules.d, where the
    /// administrator's rules live: it overrides /usr/lib/udev/rules.d and survives
    /// package upgrades) and the udevadm on PATH.
    pub fn host(rules_dir: &Path) -> Self {
        UdevHost {
            rules_dir: rules_dir.to_path_buf(),
            udevadm: find_udevadm(std::env::var_os("PATH")),
            roots: Roots::host(),
        }
    }

    fn rule_path(&self) -> PathBuf {
        self.rules_dir.join(RULE_FILE)
    }

    /// Runs `udevadm ARGS`, for after `done` (which goes into the error).
    fn udevadm(&self, done: &str, args: &[&str]) -> Result<(), UdevError> {
        let Some(udevadm) = &self.udevadm else {
            return Err(UdevError::NoUdevadm { done: done.into() });
        };
        let failed = |why: String| UdevError::Udevadm {
            done: done.into(),
            args: args.join(" "),
            why,
        };
        let out = Command::new(udevadm)
            .args(args)
            .output()
            .map_err(|e| failed(format!("cannot run {}: {e}", udevadm.display())))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        Err(failed(if stderr.is_empty() {
            out.status.to_string()
        } else {
            format!("{} ({stderr})", out.status)
        }))
    }

    /// Reload the rules, replay every cdev's event, wait for udev to handle them.
    fn refresh(&self, done: &str, action: &str) -> Result<(), UdevError> {
        self.udevadm(done, &["control", "--reload"])?;
        let action = format!("--action={action}");
        self.udevadm(done, &["trigger", "--subsystem-match=vfio-dev", &action])?;
        self.udevadm(done, &["settle", "--timeout=30"])
    }
}

/// The `udevadm` to run: the first on `path`, then the usual places.
pub fn find_udevadm(path: Option<OsString>) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("udevadm"))
        .find(|p| p.is_file())
}

/// `passvm udev ...`.
pub fn run(action: &UdevAction) -> ExitCode {
    let result = match action {
        UdevAction::Rule => {
            print!("{RULE}");
            Ok(String::new())
        }
        UdevAction::Install { rules_dir } => install(&UdevHost::host(rules_dir)),
        UdevAction::Remove { rules_dir } => remove(&UdevHost::host(rules_dir)),
    };
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("passvm: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the rule (atomically: udev may read the directory at any moment), makes
/// udev apply it to the cdevs that exist, and reports each device's link.
pub fn install(host: &UdevHost) -> Result<String, UdevError> {
    if !host.rules_dir.is_dir() {
        return Err(UdevError::NoRulesDir(host.rules_dir.clone()));
    }
    let path = host.rule_path();
    let file_err = |source| UdevError::File {
        path: path.clone(),
        source,
    };
    let done = if fs::read_to_string(&path).is_ok_and(|old| old == RULE) {
        format!("{} is up to date", path.display())
    } else {
        // udev reads only names ending in ".rules", so the temporary file is never
        // half-read; rename() then swaps the whole rule in.
        let tmp = host.rules_dir.join(format!(".{RULE_FILE}.tmp"));
        fs::write(&tmp, RULE).map_err(|source| UdevError::File {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            file_err(e)
        })?;
        format!("installed {}", path.display())
    };
    host.refresh(&done, "add")?;
    let mut report = format!("{done}; udev reloaded it and replayed the VFIO cdevs' events\n");
    report.push_str(&link_report(&host.roots));
    Ok(report)
}

/// Removes the rule and makes udev drop the links it made.
pub fn remove(host: &UdevHost) -> Result<String, UdevError> {
    let path = host.rule_path();
    let done = match fs::remove_file(&path) {
        Ok(()) => format!("removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(format!(
                "{} is not installed; nothing to do\n",
                path.display()
            ))
        }
        Err(source) => return Err(UdevError::File { path, source }),
    };
    // A "change" event runs the rules again; without the rule the cdev has no
    // /dev/vfio/<bus>/<name> any more, and udev deletes the links it had.
    host.refresh(&done, "change")?;
    Ok(format!(
        "{done}; udev dropped the /dev/vfio/<bus>/<name> links\n"
    ))
}

/// One line per VFIO cdev: its link, or why it has none.
pub fn link_report(roots: &Roots) -> String {
    let class = roots.sys_path("class/vfio-dev");
    let cdevs = dir_names(&class);
    if cdevs.is_empty() {
        return "no VFIO device cdevs yet: a device gets its link when it binds to vfio-pci \
                (passvm bind BDF)\n"
            .into();
    }
    let mut out = String::new();
    for cdev in cdevs {
        let Ok(dev) = fs::canonicalize(class.join(&cdev).join("device")) else {
            continue;
        };
        let Some((bus, name)) = links::bus_and_name(&dev) else {
            continue;
        };
        let line = match links::unlinkable(&bus, &name) {
            Some(why) => format!("{cdev}: {why}"),
            None => match links::check(roots, &bus, &name, Some(&dev)) {
                LinkState::Valid { path, .. } => format!("{cdev}: {}", path.display()),
                LinkState::Absent => format!(
                    "{cdev}: no /dev/vfio/{bus}/{name} yet (udev's log says why: \
                     journalctl -u systemd-udevd)"
                ),
                LinkState::Bad { path, why } => format!("{cdev}: {} {why}", path.display()),
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A rules dir and a fake udevadm that logs its arguments (and fails on `fail`).
    fn host(fail: Option<&str>) -> (tempfile::TempDir, UdevHost) {
        let t = tempfile::tempdir().unwrap();
        let rules = t.path().join("rules.d");
        fs::create_dir(&rules).unwrap();
        let udevadm = t.path().join("udevadm");
        let log = t.path().join("log");
        let fail = fail.unwrap_or("never");
        fs::write(
            &udevadm,
            format!(
                "#!/bin/sh\necho \"$*\" >>{}\ncase \"$1\" in {fail}) echo 'Failed to send reload request: No such file or directory' >&2; exit 1;; esac\n",
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&udevadm, fs::Permissions::from_mode(0o755)).unwrap();
        let roots = Roots {
            sys: t.path().join("sys"),
            dev: t.path().join("dev"),
            state: t.path().join("run"),
            proc: t.path().join("proc"),
        };
        let h = UdevHost {
            rules_dir: rules,
            udevadm: Some(udevadm),
            roots,
        };
        (t, h)
    }

    fn log(t: &tempfile::TempDir) -> String {
        fs::read_to_string(t.path().join("log")).unwrap_or_default()
    }

    #[test]
    fn install_writes_the_shipped_rule_and_replays_the_cdevs() {
        let (t, h) = host(None);
        let report = install(&h).unwrap();
        assert_eq!(fs::read_to_string(h.rule_path()).unwrap(), RULE);
        assert!(report.starts_with("installed "), "{report}");
        assert!(report.contains("no VFIO device cdevs yet"), "{report}");
        assert_eq!(
            log(&t),
            "control --reload\ntrigger --subsystem-match=vfio-dev --action=add\nsettle --timeout=30\n"
        );
        // Again: nothing to write, but udev is still told (that refreshes stale links).
        let report = install(&h).unwrap();
        assert!(report.contains("is up to date"), "{report}");
        assert_eq!(log(&t).lines().count(), 6);
        assert_eq!(
            dir_names(&h.rules_dir),
            [RULE_FILE],
            "no temporary file left"
        );
    }

    #[test]
    fn remove_deletes_the_rule_and_drops_the_links() {
        let (t, h) = host(None);
        let report = remove(&h).unwrap();
        assert!(report.contains("not installed"), "{report}");
        assert_eq!(log(&t), "", "nothing to tell udev");
        install(&h).unwrap();
        let report = remove(&h).unwrap();
        assert!(report.starts_with("removed "), "{report}");
        assert!(!h.rule_path().exists());
        assert!(log(&t).contains("trigger --subsystem-match=vfio-dev --action=change"));
    }

    #[test]
    fn errors_say_what_to_do() {
        let (_t, mut h) = host(Some("control"));
        let e = install(&h).unwrap_err().to_string();
        assert!(
            e.contains("installed ")
                && e.contains("udevadm control --reload` failed")
                && e.contains("No such file or directory")
                && e.contains("systemd-udevd running"),
            "{e}"
        );
        h.udevadm = None;
        let e = install(&h).unwrap_err().to_string();
        assert!(e.contains("is up to date, but there is no udevadm"), "{e}");
        assert!(
            e.contains("udevadm trigger --subsystem-match=vfio-dev"),
            "{e}"
        );
        h.rules_dir = h.rules_dir.join("missing");
        let e = install(&h).unwrap_err().to_string();
        assert!(
            e.contains("no such directory") && e.contains("--rules-dir"),
            "{e}"
        );
        let denied = UdevError::File {
            path: "/etc/udev/rules.d/70-passvm-vfio.rules".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(denied.to_string().contains("run it as root"), "{denied}");
    }

    #[test]
    fn udevadm_is_found_on_path_first() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("udevadm");
        fs::write(&bin, "").unwrap();
        let path = std::env::join_paths([t.path()]).unwrap();
        assert_eq!(find_udevadm(Some(path)), Some(bin));
    }

    #[test]
    fn the_report_names_each_cdev_s_link() {
        let (t, h) = host(None);
        let sys = &h.roots.sys;
        let dev_dir = sys.join("devices/pci0000:00/0000:00:03.0");
        let vd = dev_dir.join("vfio-dev/vfio0");
        fs::create_dir_all(&vd).unwrap();
        fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
        fs::create_dir_all(sys.join("class/vfio-dev")).unwrap();
        std::os::unix::fs::symlink(sys.join("bus/pci"), dev_dir.join("subsystem")).unwrap();
        std::os::unix::fs::symlink(&dev_dir, vd.join("device")).unwrap();
        std::os::unix::fs::symlink(&vd, sys.join("class/vfio-dev/vfio0")).unwrap();
        let report = link_report(&h.roots);
        assert!(
            report.contains("vfio0: no /dev/vfio/pci/0000:00:03.0 yet"),
            "{report}"
        );
        drop(t);
    }
}
