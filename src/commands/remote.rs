//! `passvm remote --api-socket PATH ACTION`: the control API's client (docs/api.md).
//! One request per run; the answer's JSON goes to stdout, pretty-printed with two-space
//! indents as `passvm devices --json` prints. Exit status: 0 for a 2xx answer, 1 for an
//! error answer (its error and hint also on stderr), 2 for a usage error or no answer.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use devices::option_list;

use crate::api::client::{self, ClientResponse};
use crate::api::error::ErrorBody;
use crate::api::http::reason;
use crate::api::request::{AddDeviceBody, Endpoint, RemoveDeviceBody};
use crate::cli::RemoteAction;
use crate::exit::{EXIT_ERROR, EXIT_USAGE};

/// How long the client waits for an answer (the server's own deadlines are shorter).
const TIMEOUT: Duration = Duration::from_secs(60);

/// One request, ready to send.
struct Call {
    endpoint: Endpoint,
    body: Option<Vec<u8>>,
    fd: Option<RawFd>,
}

/// Runs `passvm remote` and returns its exit status.
pub fn run(socket: &str, action: &RemoteAction) -> ExitCode {
    let call = socket_path(socket).and_then(|path| Ok((path, build(action)?)));
    let (path, call) = match call {
        Ok(c) => c,
        Err(e) => {
            eprintln!("passvm: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let answer = client::call(
        &path,
        call.endpoint.method(),
        &call.endpoint.path(),
        call.body.as_deref(),
        call.fd,
        TIMEOUT,
    );
    match answer {
        Ok(r) => report(&r),
        Err(e) => {
            eprintln!("passvm: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `--api-socket PATH` or `path=PATH`.
fn socket_path(arg: &str) -> Result<PathBuf, String> {
    match option_list::parse(arg, &["path"]) {
        Ok(pairs) => match pairs.as_slice() {
            [("path", p)] => Ok(PathBuf::from(p)),
            _ => Err(format!("--api-socket {arg:?}: give the socket's path")),
        },
        Err(e) => Err(format!("--api-socket {arg:?}: {e}; give the socket's path")),
    }
}

/// The request for `action`.
fn build(action: &RemoteAction) -> Result<Call, String> {
    let plain = |endpoint| Call {
        endpoint,
        body: None,
        fd: None,
    };
    Ok(match action {
        RemoteAction::Ping => plain(Endpoint::VmmPing),
        RemoteAction::Info => plain(Endpoint::VmInfo),
        RemoteAction::PowerButton => plain(Endpoint::VmPowerButton),
        RemoteAction::Shutdown { vmm: false } => plain(Endpoint::VmShutdown),
        RemoteAction::Shutdown { vmm: true } => plain(Endpoint::VmmShutdown),
        RemoteAction::RemoveDevice { id } => {
            let pairs = option_list::parse(id, &["id"])
                .map_err(|e| format!("remove-device {id:?}: {e}; give id=ID"))?;
            let id = pairs
                .first()
                .map(|(_, v)| v.to_string())
                .ok_or_else(|| format!("remove-device {id:?}: give id=ID"))?;
            let body = serde_json::to_vec(&RemoveDeviceBody { id }).map_err(|e| e.to_string())?;
            Call {
                endpoint: Endpoint::VmRemoveDevice,
                body: Some(body),
                fd: None,
            }
        }
        RemoteAction::AddDevice { device } => {
            let (mut body, fd) =
                AddDeviceBody::from_device_arg(device).map_err(|e| e.to_string())?;
            // passvm resolves paths in its own directory: send this one's view.
            let cwd = std::env::current_dir().ok();
            body.path = body.path.map(|p| absolute(&p, cwd.as_deref()));
            body.romfile = body.romfile.map(|p| absolute(&p, cwd.as_deref()));
            if let Some(fd) = fd {
                check_open(fd)?;
            }
            let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            Call {
                endpoint: Endpoint::VmAddDevice,
                body: Some(body),
                fd,
            }
        }
    })
}

/// `p` made absolute against `cwd` when it is a relative path (a BDF stays as it is).
fn absolute(p: &str, cwd: Option<&Path>) -> String {
    let looks_like_path = p.starts_with('.') || p.contains('/');
    match cwd {
        Some(cwd) if looks_like_path && !p.starts_with('/') => cwd.join(p).display().to_string(),
        _ => p.to_string(),
    }
}

/// The descriptor `fd=N` names must be open here: it is sent, not its number.
fn check_open(fd: RawFd) -> Result<(), String> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "add-device fd={fd}: descriptor {fd} is not open in passvm remote; the launcher \
             must open the VFIO cdev and pass it (e.g. `passvm remote ... add-device fd=7 \
             7<>/dev/vfio/devices/vfio3`)"
        ));
    }
    Ok(())
}

/// Prints the answer and gives the exit status.
fn report(r: &ClientResponse) -> ExitCode {
    if !r.body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&r.body) {
            Ok(v) => println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            ),
            Err(_) => println!("{}", String::from_utf8_lossy(&r.body)),
        }
    }
    if (200..300).contains(&r.status) {
        return ExitCode::SUCCESS;
    }
    match serde_json::from_slice::<ErrorBody>(&r.body) {
        Ok(e) => {
            eprintln!(
                "passvm: {} (HTTP {} {})",
                e.error,
                r.status,
                reason(r.status)
            );
            eprintln!("passvm: hint: {}", e.hint);
        }
        Err(_) => eprintln!(
            "passvm: the API answered HTTP {} {} without an error body",
            r.status,
            reason(r.status)
        ),
    }
    ExitCode::from(EXIT_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_become_requests() {
        let c = build(&RemoteAction::Ping).unwrap();
        assert_eq!((c.endpoint, c.body, c.fd), (Endpoint::VmmPing, None, None));
        let c = build(&RemoteAction::Shutdown { vmm: true }).unwrap();
        assert_eq!(c.endpoint, Endpoint::VmmShutdown);
        let c = build(&RemoteAction::RemoveDevice { id: "id=d1".into() }).unwrap();
        assert_eq!(c.body.as_deref(), Some(&br#"{"id":"d1"}"#[..]));
        let c = build(&RemoteAction::RemoveDevice { id: "d1".into() }).unwrap();
        assert_eq!(c.body.as_deref(), Some(&br#"{"id":"d1"}"#[..]));
        assert!(build(&RemoteAction::RemoveDevice {
            id: "name=d1".into()
        })
        .is_err());
        let c = build(&RemoteAction::AddDevice {
            device: "0a:03.1,id=nic,managed=on".into(),
        })
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&c.body.unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"path": "0a:03.1", "id": "nic", "managed": "on"})
        );
        // The same checks as --device, before anything is sent.
        let e = build(&RemoteAction::AddDevice {
            device: "0a:03.1,colour=red".into(),
        })
        .err()
        .unwrap();
        assert!(e.contains("unknown option \"colour\""), "{e}");
        let e = build(&RemoteAction::AddDevice {
            device: "fd=987654".into(),
        })
        .err()
        .unwrap();
        assert!(e.contains("not open in passvm remote"), "{e}");
        let f = std::fs::File::open("/dev/null").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&f);
        let c = build(&RemoteAction::AddDevice {
            device: format!("fd={n},id=d2"),
        })
        .unwrap();
        assert_eq!(c.fd, Some(n));
        assert_eq!(c.body.as_deref(), Some(&br#"{"id":"d2"}"#[..]));
    }

    #[test]
    fn relative_paths_are_the_clients() {
        let cwd = Path::new("/home/u");
        assert_eq!(absolute("./rom.bin", Some(cwd)), "/home/u/./rom.bin");
        assert_eq!(absolute("roms/a.rom", Some(cwd)), "/home/u/roms/a.rom");
        assert_eq!(absolute("/srv/a.rom", Some(cwd)), "/srv/a.rom");
        assert_eq!(absolute("0000:0a:03.1", Some(cwd)), "0000:0a:03.1");
        assert_eq!(
            socket_path("path=/run/a.sock"),
            Ok(PathBuf::from("/run/a.sock"))
        );
        assert_eq!(socket_path("/run/a.sock"), Ok(PathBuf::from("/run/a.sock")));
        assert!(socket_path("fd=3").is_err());
    }
}
