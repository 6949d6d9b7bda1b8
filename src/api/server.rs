//! The `api` thread: accepts one connection at a time on the API socket, reads the
//! request within [`REQUEST_DEADLINE`] and the size limits of `http.rs`, parses it into a
//! typed request, posts it to the event loop ([`Mailbox`]) and writes the answer as JSON.
//! It holds nothing of the VM, and no input ends it: every failure is an error response
//! (or, for a client that sent nothing, a closed connection), and the thread goes back to
//! `accept`. It installs its own seccomp filter first thing (the `api` kind).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::error::ApiError;
use super::http::{self, Incoming};
use super::mailbox::{Mailbox, Reply};
use super::request;
use super::socket::{ApiListener, SocketFile};
use crate::exit::{ExitReason, VmExit};
use crate::seccomp::ThreadFilter;

/// How long a client has to send its whole request once connected, and to take the
/// answer: one slow client holds the API for at most this long.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a client that sent a bad request may go on sending before passvm closes
/// the connection (`http::linger`).
const LINGER: Duration = Duration::from_secs(2);
/// How long the API waits for the event loop's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The running `api` thread. Dropping it stops the thread, waits for it and removes the
/// socket file.
#[derive(Debug)]
pub struct ApiServer {
    thread: Option<JoinHandle<()>>,
    stop: EventFd,
    /// Dropped after the thread has ended, so no client finds a path without a server.
    _file: Option<SocketFile>,
}

impl ApiServer {
    /// Starts the thread on `socket`. A filter that cannot be installed stops the VM
    /// through `exit`, as on every other thread.
    pub fn spawn(
        socket: ApiListener,
        mailbox: Mailbox,
        filter: ThreadFilter,
        exit: Arc<VmExit>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let thread_stop = stop.try_clone()?;
        let ApiListener { listener, file } = socket;
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                if let Err(e) = filter.apply() {
                    exit.request(ExitReason::VmmError(e.to_string()));
                    return;
                }
                serve(&listener, &mailbox, &thread_stop);
            })?;
        Ok(Self {
            thread: Some(thread),
            stop,
            _file: file,
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot stop the API thread: {e}");
            return;
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the API thread panicked");
            }
        }
    }
}

/// The thread's loop: until `stop`, one connection after the other.
pub fn serve(listener: &std::os::unix::net::UnixListener, mailbox: &Mailbox, stop: &EventFd) {
    loop {
        match http::wait(
            listener.as_raw_fd(),
            libc::POLLIN,
            Some(stop.as_raw_fd()),
            None,
        ) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::error!("API socket: poll failed ({e}); the API stops, the VM goes on");
                return;
            }
        }
        match listener.accept() {
            Ok((conn, _)) => serve_connection(&conn, mailbox, stop),
            // The client left before we took it, or the listener has nothing after all.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                log::warn!("API socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One connection: read, answer, close.
fn serve_connection(conn: &UnixStream, mailbox: &Mailbox, stop: &EventFd) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let (reply, what, whole) =
        match http::read_request(conn, stop.as_raw_fd(), deadline, REQUEST_DEADLINE.as_secs()) {
            Ok(Incoming::Request(r)) => {
                let what = format!("{} {}", r.method, r.path);
                let reply = request::parse(&r.method, &r.path, &r.body, r.fds)
                    .and_then(|req| mailbox.call(req, ANSWER_TIMEOUT));
                (reply, what, !r.trailing)
            }
            Ok(Incoming::Closed | Incoming::Stopped) => return,
            Err(e) => (Err(e), "a malformed request".to_string(), false),
        };
    let bytes = response(&reply);
    match &reply {
        Ok(r) => log::info!("API: {what}: {}", r.status()),
        Err(e) => log::info!("API: {what}: {} {e}", e.status()),
    }
    if let Err(e) = http::write_all(conn, &bytes, deadline) {
        log::info!("API: {what}: the answer did not reach the client: {e}");
        return;
    }
    // Unread bytes would reset the connection when it is closed: read them first.
    if !whole {
        http::linger(conn, Instant::now() + LINGER);
    }
}

/// The response for `reply`: the JSON body, or the error body with its status (and
/// `Allow` for 405).
pub fn response(reply: &Reply) -> Vec<u8> {
    let error = |e: &ApiError| {
        let allow = match e {
            ApiError::WrongMethod { allowed, .. } => Some(*allowed),
            _ => None,
        };
        let body = serde_json::to_vec(&e.body()).ok();
        http::response_bytes(e.status(), allow, body.as_deref())
    };
    match reply {
        Err(e) => error(e),
        Ok(r) => match r.body().transpose() {
            Ok(body) => http::response_bytes(r.status(), None, body.as_deref()),
            Err(e) => error(&ApiError::Internal(format!(
                "cannot encode the answer: {e}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::client::{self, ClientResponse};
    use crate::api::handler::tests::handler;
    use crate::api::hotplug::NoHotplugSlots;
    use crate::api::socket::ApiSocketConfig;
    use crate::seccomp::{Filters, SeccompMode, ThreadKind};
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set in a child of the test binary that runs the exchanges under the `api` filter.
    const CHILD_ENV: &str = "PASSVM_API_SECCOMP_CHILD";

    /// An API server on a socket in a temporary directory; a thread stands in for the
    /// event loop and answers with the real handler.
    struct Bed {
        _dir: tempfile::TempDir,
        path: PathBuf,
        server: Option<ApiServer>,
        done: Arc<AtomicBool>,
        event_loop: Option<JoinHandle<()>>,
        exit: Arc<VmExit>,
        button: EventFd,
    }

    impl Bed {
        fn start(filter: ThreadFilter) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("api.sock");
            let socket = ApiListener::open(&ApiSocketConfig::Path(path.clone())).unwrap();
            let (mut h, exit, button, mailbox) = handler(Box::new(NoHotplugSlots));
            let server = ApiServer::spawn(socket, mailbox, filter, exit.clone()).unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let stop = done.clone();
            let event_loop = std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    h.answer_posted();
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            Self {
                _dir: dir,
                path,
                server: Some(server),
                done,
                event_loop: Some(event_loop),
                exit,
                button,
            }
        }

        fn call(&self, method: &str, name: &str, body: Option<&str>) -> ClientResponse {
            client::call(
                &self.path,
                method,
                &format!("/api/v1/{name}"),
                body.map(str::as_bytes),
                None,
                Duration::from_secs(10),
            )
            .unwrap()
        }

        /// Raw bytes in, the whole answer out.
        fn raw(&self, bytes: &[u8]) -> String {
            let mut c = UnixStream::connect(&self.path).unwrap();
            c.write_all(bytes).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        }
    }

    impl Drop for Bed {
        fn drop(&mut self) {
            drop(self.server.take());
            self.done.store(true, Ordering::SeqCst);
            if let Some(t) = self.event_loop.take() {
                let _ = t.join();
            }
        }
    }

    fn json(r: &ClientResponse) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Every kind of exchange, checked; what both tests below run.
    fn exercise(bed: &Bed) {
        let r = bed.call("GET", "vmm.ping", None);
        assert_eq!(r.status, 200);
        assert_eq!(json(&r)["version"], env!("CARGO_PKG_VERSION"));
        let r = bed.call("GET", "vm.info", None);
        assert_eq!(r.status, 200);
        let info = json(&r);
        assert_eq!(info["state"], "Running");
        assert_eq!(info["devices"][0]["guest_bdf"], "0000:00:01.0");
        assert_eq!(info["devices"][0]["host"]["bdf"], "0000:00:04.0");

        let r = bed.call("GET", "vm.boot", None);
        assert_eq!(r.status, 404);
        assert!(json(&r)["error"].as_str().unwrap().contains("no endpoint"));
        let raw = bed.raw(b"GET /api/v1/vm.shutdown HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            raw.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{raw}"
        );
        assert!(raw.contains("\r\nAllow: PUT\r\n"), "{raw}");
        let r = bed.call("PUT", "vm.add-device", Some("{"));
        assert_eq!(r.status, 400);
        let e: crate::api::error::ErrorBody = serde_json::from_slice(&r.body).unwrap();
        assert!(e.error.contains("vm.add-device"), "{e:?}");
        assert!(e.hint.contains("send a body like"), "{e:?}");
        let r = bed.call("PUT", "vm.remove-device", Some(r#"{"id": "nosuch"}"#));
        assert_eq!(r.status, 404);

        // Garbage of every kind; the thread answers or drops it and goes on.
        let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\xff\r\n\r\n";
        assert!(bed.raw(tls_hello).starts_with("HTTP/1.1 400 "));
        assert!(bed
            .raw(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost")
            .starts_with("HTTP/1.1 400 "));
        assert_eq!(bed.raw(b""), "", "nothing sent, nothing answered");
        let mut junk = vec![b'A'; http::MAX_HEAD + 100];
        junk.extend_from_slice(b"\r\n\r\n");
        assert!(bed.raw(&junk).starts_with("HTTP/1.1 431 "));
        let big = format!(
            "PUT /api/v1/vm.add-device HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            http::MAX_BODY * 2
        );
        assert!(bed.raw(big.as_bytes()).starts_with("HTTP/1.1 413 "));
        for _ in 0..20 {
            drop(UnixStream::connect(&bed.path).unwrap());
        }

        // A descriptor with the request: parsed as the device, refused for want of a slot.
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let r = client::call(
            &bed.path,
            "PUT",
            "/api/v1/vm.add-device",
            Some(br#"{"id": "d9"}"#),
            Some(std::os::fd::AsRawFd::as_raw_fd(&devnull)),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert!(json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("no hot-pluggable slot"));

        assert_eq!(
            bed.call("GET", "vmm.ping", None).status,
            200,
            "still serving"
        );
        assert_eq!(bed.call("PUT", "vm.power-button", None).status, 204);
        assert_eq!(bed.button.read().unwrap(), 1);
        assert!(!bed.exit.is_stopping(), "no request so far stopped the VM");
        let r = bed.call("PUT", "vm.shutdown", None);
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert_eq!(
            bed.exit.reason(),
            Some(ExitReason::ApiShutdown("vm.shutdown"))
        );
    }

    fn socket_gone(path: &Path) -> bool {
        !path.exists()
    }

    #[test]
    fn real_exchanges_over_the_socket() {
        let off = Filters::new(SeccompMode::Off).unwrap();
        let mut bed = Bed::start(off.thread(ThreadKind::Api));
        exercise(&bed);
        let path = bed.path.clone();
        drop(bed.server.take());
        assert!(socket_gone(&path), "the socket file goes with the server");
    }

    /// The child's side: the same exchanges with the `api` filter on its thread (a call
    /// outside the list would end this process with status 5, naming it).
    #[test]
    fn child_serves_under_the_api_filter() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let _ = env_logger::builder()
            .filter_level(log::LevelFilter::Info)
            .try_init();
        let filters = Filters::new(SeccompMode::On).unwrap();
        let bed = Bed::start(filters.thread(ThreadKind::Api));
        exercise(&bed);
        drop(bed);
        println!("API-SURVIVED");
    }

    #[test]
    fn the_api_thread_makes_only_the_calls_its_filter_allows() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "api::server::tests::child_serves_under_the_api_filter",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("API-SURVIVED"),
            "status {:?}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        assert!(
            stderr.contains("API: GET /api/v1/vmm.ping: 200"),
            "the log ran: {stderr}"
        );
    }
}
