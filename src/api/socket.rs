//! The API's listening socket: `--api-socket path=PATH` (passvm binds it) or `fd=N` (a
//! launcher bound it and passes it listening). The checks here run twice: from
//! `config.rs` when the command line is validated (every mistake is one line with the
//! fix, exit status 2), and again when passvm binds, since a stale socket file is only
//! replaced when nothing listens on it at that moment.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use devices::option_list;

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiSocketConfig {
    /// A path passvm binds (and removes at exit).
    Path(PathBuf),
    /// A listening Unix stream socket passvm inherited.
    Fd(RawFd),
}

/// The forms `--api-socket` takes, for messages.
const FORMS: &str = "use path=PATH (passvm creates the socket) or fd=N (a listening Unix \
                     socket passed by a launcher)";

impl ApiSocketConfig {
    /// Parses and checks an `--api-socket` value (`path=PATH`, a bare `PATH`, or
    /// `fd=N`). The error says what is wrong and what to do.
    pub fn from_arg(s: &str) -> Result<Self, String> {
        let opts = option_list::parse(s, &["path", "fd"]).map_err(|e| format!("{e}; {FORMS}"))?;
        let cfg = match opts.as_slice() {
            [("path", p)] => Self::Path(PathBuf::from(p)),
            [("fd", n)] => Self::Fd(
                n.parse::<RawFd>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("fd={n} is not a descriptor number; {FORMS}"))?,
            ),
            _ => return Err(format!("give one of path= and fd=; {FORMS}")),
        };
        match &cfg {
            Self::Path(p) => {
                check_path(p)?;
            }
            Self::Fd(fd) => check_fd(*fd)?,
        }
        Ok(cfg)
    }
}

/// What is at a socket path now.
#[derive(Debug, PartialEq, Eq)]
enum PathState {
    /// Nothing: passvm binds it.
    Free,
    /// A socket nobody listens on (a passvm that was killed): passvm replaces it.
    Stale,
}

/// Whether passvm can bind `path`: its directory exists, and nothing but a stale socket
/// is there.
fn check_path(path: &Path) -> Result<PathState, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "the directory {} does not exist: create it, or put the socket in one that does",
            dir.display()
        ));
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PathState::Free),
        Err(e) => {
            return Err(format!(
                "cannot look at it ({e}); check its directory's permissions"
            ))
        }
    };
    if !meta.file_type().is_socket() {
        let kind = if meta.is_dir() {
            "a directory"
        } else if meta.file_type().is_symlink() {
            "a symbolic link"
        } else {
            "a file that is not a socket"
        };
        return Err(format!(
            "{} is {kind}: passvm does not replace it; remove it or choose another path",
            path.display()
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "something already listens on {} (another passvm?): stop it, or choose another path",
            path.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(PathState::Stale),
        Err(e) => Err(format!(
            "{} is a socket passvm cannot probe ({e}); remove it or choose another path",
            path.display()
        )),
    }
}

/// Whether `fd` is a listening Unix stream socket.
fn check_fd(fd: RawFd) -> Result<(), String> {
    let sock_opt = |opt: libc::c_int| -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that large.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(v)
        }
    };
    let domain = match sock_opt(libc::SO_DOMAIN) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => {
            return Err(format!(
                "fd {fd} is not open in passvm: the launcher must pass it (without \
                 close-on-exec)"
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(format!(
                "fd {fd} is not a socket: pass a Unix stream socket that is bound and \
                 listening, or use path=PATH"
            ))
        }
        Err(e) => return Err(format!("fd {fd}: cannot query it ({e})")),
    };
    let stream = sock_opt(libc::SO_TYPE).map_err(|e| format!("fd {fd}: {e}"))?;
    if domain != libc::AF_UNIX || stream != libc::SOCK_STREAM {
        return Err(format!(
            "fd {fd} is not a Unix stream socket: pass an AF_UNIX SOCK_STREAM socket, or use \
             path=PATH"
        ));
    }
    if sock_opt(libc::SO_ACCEPTCONN).map_err(|e| format!("fd {fd}: {e}"))? == 0 {
        return Err(format!(
            "fd {fd} is a Unix socket that is not listening: bind it and call listen() \
             before passing it"
        ));
    }
    Ok(())
}

/// The socket file passvm made; removed when dropped (at exit).
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove the API socket {}: {e}", self.0.display());
            }
        }
    }
}

/// The API's listening socket, ready for the API thread.
#[derive(Debug)]
pub struct ApiListener {
    /// Non-blocking: the API thread polls it with its stop eventfd.
    pub listener: UnixListener,
    /// The file to remove at exit (none for `fd=N`: the launcher owns its path).
    pub file: Option<SocketFile>,
}

/// Binding the API socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    /// The path is not usable (any more).
    #[error("--api-socket {path}: {why}")]
    Path {
        /// The path.
        path: String,
        /// What is wrong and the fix.
        why: String,
    },
    /// An OS call failed.
    #[error("--api-socket {what}: {source}")]
    Os {
        /// What failed, with the socket.
        what: String,
        /// The error.
        source: io::Error,
    },
}

impl ApiListener {
    /// Binds (or takes) the socket. A path's file gets mode 0600: whoever can connect
    /// controls the VM.
    pub fn open(cfg: &ApiSocketConfig) -> Result<Self, ApiSocketError> {
        let os = |what: String| move |source| ApiSocketError::Os { what, source };
        let (listener, file) = match cfg {
            ApiSocketConfig::Path(path) => {
                let shown = path.display().to_string();
                let state = check_path(path).map_err(|why| ApiSocketError::Path {
                    path: shown.clone(),
                    why,
                })?;
                if state == PathState::Stale {
                    log::info!("--api-socket {shown}: replacing a stale socket nobody listens on");
                    fs::remove_file(path)
                        .map_err(os(format!("{shown}: removing the stale socket")))?;
                }
                let listener = UnixListener::bind(path).map_err(os(format!("{shown}: bind")))?;
                let file = SocketFile(path.clone());
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .map_err(os(format!("{shown}: chmod 0600")))?;
                (listener, Some(file))
            }
            ApiSocketConfig::Fd(fd) => {
                check_fd(*fd).map_err(|why| ApiSocketError::Path {
                    path: format!("fd={fd}"),
                    why,
                })?;
                // SAFETY: `fd` is an open listening Unix stream socket (checked above)
                // that the launcher handed to passvm alone; from here the listener owns it.
                (unsafe { UnixListener::from_raw_fd(*fd) }, None)
            }
        };
        listener
            .set_nonblocking(true)
            .map_err(os(format!("fd {}: non-blocking", listener.as_raw_fd())))?;
        Ok(Self { listener, file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn the_forms_parse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.sock");
        let s = p.to_str().unwrap();
        assert_eq!(
            ApiSocketConfig::from_arg(s),
            Ok(ApiSocketConfig::Path(p.clone()))
        );
        assert_eq!(
            ApiSocketConfig::from_arg(&format!("path={s}")),
            Ok(ApiSocketConfig::Path(p.clone()))
        );
        for bad in ["fd=-1", "fd=x", "path=/a,fd=3", "colour=red", ""] {
            let e = ApiSocketConfig::from_arg(bad).unwrap_err();
            assert!(e.contains("path=PATH") || e.contains("fd="), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_paths_say_what_to_do() {
        let e = ApiSocketConfig::from_arg("/no/such/dir/api.sock").unwrap_err();
        assert!(e.contains("/no/such/dir does not exist: create it"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let e = ApiSocketConfig::from_arg(file.to_str().unwrap()).unwrap_err();
        assert!(
            e.contains("a file that is not a socket") && e.contains("remove it"),
            "{e}"
        );
        let e = ApiSocketConfig::from_arg(dir.path().to_str().unwrap()).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.sock");
        let cfg = ApiSocketConfig::Path(p.clone());
        let first = ApiListener::open(&cfg).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = ApiSocketConfig::from_arg(p.to_str().unwrap()).unwrap_err();
        assert!(
            e.contains("something already listens") && e.contains("another passvm"),
            "{e}"
        );
        assert!(ApiListener::open(&cfg).is_err());
        // A killed passvm leaves its file: nothing listens, so it is replaced.
        let ApiListener { listener, file } = first;
        std::mem::forget(file);
        drop(listener);
        assert!(p.exists());
        assert_eq!(
            ApiSocketConfig::from_arg(p.to_str().unwrap()),
            Ok(cfg.clone())
        );
        let second = ApiListener::open(&cfg).unwrap();
        assert!(UnixStream::connect(&p).is_ok());
        drop(second);
        assert!(!p.exists(), "removed at exit");
    }

    #[test]
    fn descriptors_must_be_listening_unix_sockets() {
        let e = ApiSocketConfig::from_arg("fd=999999").unwrap_err();
        assert!(e.contains("not open in passvm"), "{e}");
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = ApiSocketConfig::from_arg(&format!("fd={}", f.as_raw_fd())).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        let e = ApiSocketConfig::from_arg(&format!("fd={}", a.as_raw_fd())).unwrap_err();
        assert!(e.contains("not listening") && e.contains("listen()"), "{e}");
        let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let e = ApiSocketConfig::from_arg(&format!("fd={}", dgram.as_raw_fd())).unwrap_err();
        assert!(e.contains("not a Unix stream socket"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("launcher.sock");
        let fd = UnixListener::bind(&p).unwrap().into_raw_fd();
        let cfg = ApiSocketConfig::from_arg(&format!("fd={fd}")).unwrap();
        assert_eq!(cfg, ApiSocketConfig::Fd(fd));
        let l = ApiListener::open(&cfg).unwrap();
        assert!(l.file.is_none(), "the launcher's path is the launcher's");
        drop(l);
        assert!(p.exists());
    }
}
