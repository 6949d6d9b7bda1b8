//! HTTP/1.1 on the API's connections: a request read whole within size limits and a
//! deadline (the head parsed by `httparse`, the body taken by its Content-Length, any
//! descriptors that came with it kept), and a response written. One request per
//! connection (every response says `Connection: close`), as Cloud Hypervisor's
//! `ch-remote` and `curl --unix-socket` use it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::error::ApiError;
use super::fd_passing;

/// The longest request line and headers taken.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest body taken: every request body of the API is a small JSON object.
pub const MAX_BODY: usize = 64 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 32;
/// The most bytes [`linger`] reads and drops after an error answer.
const MAX_LINGER: usize = 1 << 20;

/// A request as it came off the socket.
#[derive(Debug)]
pub struct HttpRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target (`/api/v1/vmm.ping`).
    pub path: String,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
    /// Descriptors that came with the request (SCM_RIGHTS).
    pub fds: Vec<OwnedFd>,
    /// Bytes came after the request (a pipelined one), which are not read.
    pub trailing: bool,
}

/// How reading a connection ended.
#[derive(Debug)]
pub enum Incoming {
    /// A whole request.
    Request(HttpRequest),
    /// The client closed the connection before sending anything.
    Closed,
    /// The server is stopping: the connection is dropped unanswered.
    Stopped,
}

/// What the head says about the body.
struct Head {
    len: usize,
    method: String,
    path: String,
    body_len: usize,
    expect_continue: bool,
}

/// Waits until `fd` is ready for `events` or `stop` (if given) is readable, until
/// `deadline` (`TimedOut` after it). Returns `Ok(true)` when `fd` is ready, `Ok(false)`
/// when `stop` fired.
pub fn wait(
    fd: RawFd,
    events: libc::c_short,
    stop: Option<RawFd>,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                // Rounded up, so the wait never ends a little before the deadline.
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        };
        let mut fds = [
            libc::pollfd {
                fd,
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfd for the call (poll skips the
        // negative fd of an absent `stop`).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// Reads one request from `conn` by `deadline`, or until `stop` becomes readable.
pub fn read_request(
    conn: &UnixStream,
    stop: RawFd,
    deadline: Instant,
    deadline_secs: u64,
) -> Result<Incoming, ApiError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut head: Option<Head> = None;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(h) = &head {
            if buf.len() >= h.len + h.body_len {
                let Head {
                    len,
                    method,
                    path,
                    body_len,
                    ..
                } = head
                    .take()
                    .ok_or_else(|| ApiError::Internal("no head".into()))?;
                // Whatever follows the body (a pipelined request) is not read: one
                // request per connection.
                let body = buf.get(len..len + body_len).unwrap_or_default().to_vec();
                return Ok(Incoming::Request(HttpRequest {
                    method,
                    path,
                    body,
                    fds,
                    trailing: buf.len() > len + body_len,
                }));
            }
        }
        match wait(conn.as_raw_fd(), libc::POLLIN, Some(stop), Some(deadline)) {
            Ok(true) => {}
            Ok(false) => return Ok(Incoming::Stopped),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(ApiError::Timeout {
                    secs: deadline_secs,
                })
            }
            Err(e) => return Err(ApiError::Internal(format!("poll: {e}"))),
        }
        // Never more than the limits allow: the head, then at most the body announced.
        let room = match &head {
            None => MAX_HEAD + 1 - buf.len().min(MAX_HEAD + 1),
            Some(h) => h.len + h.body_len - buf.len(),
        }
        .clamp(1, chunk.len());
        let got = match fd_passing::recv(conn, &mut chunk[..room], &mut fds) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApiError::Malformed(format!("reading the request: {e}"))),
        };
        if got.truncated {
            return Err(ApiError::Malformed(format!(
                "more than {} descriptors came with the request",
                fd_passing::MAX_FDS
            )));
        }
        if got.len == 0 {
            return if buf.is_empty() {
                Ok(Incoming::Closed)
            } else {
                Err(ApiError::Malformed(
                    "the connection was closed before the request was whole".into(),
                ))
            };
        }
        buf.extend_from_slice(&chunk[..got.len]);
        if head.is_none() {
            head = parse_head(&buf)?;
            if let Some(h) = &head {
                if h.expect_continue && buf.len() < h.len + h.body_len {
                    write_all(conn, b"HTTP/1.1 100 Continue\r\n\r\n", deadline)
                        .map_err(|e| ApiError::Malformed(format!("writing 100 Continue: {e}")))?;
                }
            }
        }
    }
}

/// The head of `buf`, once it is whole.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ApiError::HeadTooLarge { limit: MAX_HEAD })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::Malformed(format!(
                "more than {MAX_HEADERS} headers"
            )))
        }
        Err(e) => return Err(ApiError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(ApiError::HeadTooLarge { limit: MAX_HEAD });
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    let mut body_len: Option<u64> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| {
                ApiError::Malformed(format!("Content-Length {value:?} is not a number"))
            })?;
            if body_len.is_some_and(|b| b != n) {
                return Err(ApiError::Malformed("two different Content-Lengths".into()));
            }
            body_len = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let body_len = body_len.unwrap_or(0);
    let body_len = usize::try_from(body_len)
        .ok()
        .filter(|n| *n <= MAX_BODY)
        .ok_or(ApiError::BodyTooLarge {
            size: body_len,
            limit: MAX_BODY,
        })?;
    Ok(Some(Head {
        len,
        method,
        path,
        body_len,
        expect_continue,
    }))
}

/// The reason phrase of the statuses the API answers with.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of a response: status line, headers, body.
pub fn response_bytes(status: u16, allow: Option<&str>, body: Option<&[u8]>) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nServer: passvm/{}\r\nConnection: close\r\n",
        reason(status),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(allow) = allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

/// Writes all of `bytes` to `conn` by `deadline` (a client that stops reading does not
/// hold the API thread longer). A stopping server still finishes the write: the answer
/// to `vm.shutdown` goes out while the VM stops.
pub fn write_all(conn: &UnixStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: sending from a live slice of `bytes.len()` bytes.
        let n = unsafe {
            libc::send(
                conn.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            bytes = bytes.get(n as usize..).unwrap_or_default();
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                wait(conn.as_raw_fd(), libc::POLLOUT, None, Some(deadline))?;
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// After an error answer to a request that was not read whole: ends passvm's side of the
/// connection and reads and drops what the client still sends (at most [`MAX_LINGER`]
/// bytes, until `deadline`), so that closing the connection does not reset it before
/// the client has read the answer (a Unix socket closed with unread data resets its
/// peer, as TCP does).
pub fn linger(conn: &UnixStream, deadline: Instant) {
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut scratch = [0u8; 4096];
    let mut fds = Vec::new();
    let mut drained = 0;
    while drained < MAX_LINGER {
        if !matches!(
            wait(conn.as_raw_fd(), libc::POLLIN, None, Some(deadline)),
            Ok(true)
        ) {
            return;
        }
        match fd_passing::recv(conn, &mut scratch, &mut fds) {
            Ok(got) if got.len > 0 => drained += got.len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            _ => return,
        }
        // Descriptors that came along are closed with the rest.
        fds.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;
    use vmm_sys_util::eventfd::EventFd;

    fn read(bytes: &[u8]) -> Result<Incoming, ApiError> {
        let (mut client, server) = UnixStream::pair().unwrap();
        client.write_all(bytes).unwrap();
        drop(client);
        let stop = EventFd::new(0).unwrap();
        read_request(
            &server,
            stop.as_raw_fd(),
            Instant::now() + Duration::from_secs(5),
            5,
        )
    }

    fn request(bytes: &[u8]) -> HttpRequest {
        match read(bytes) {
            Ok(Incoming::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_with_a_body_is_read_whole() {
        let r = request(
            b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nHost: localhost\r\nContent-Length: 13\r\n\r\n{\"id\": \"d0\"}\nEXTRA",
        );
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("PUT", "/api/v1/vm.remove-device")
        );
        assert_eq!(r.body, b"{\"id\": \"d0\"}\n");
        assert!(r.trailing, "EXTRA is left unread");
        let r = request(b"GET /api/v1/vmm.ping HTTP/1.0\r\n\r\n");
        assert!(r.body.is_empty() && !r.trailing);
        assert!(matches!(read(b""), Ok(Incoming::Closed)));
    }

    #[test]
    fn framing_errors_have_their_statuses() {
        let status = |b: &[u8]| match read(b) {
            Err(e) => e.status(),
            Ok(other) => panic!("{other:?}"),
        };
        assert_eq!(status(b"\x00\x01garbage\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"),
            400
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a"), 400, "closed mid-head");
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            411
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status(
                format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1).as_bytes()
            ),
            413
        );
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(status(&long), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 400);
    }

    #[test]
    fn a_slow_client_times_out_and_stop_ends_the_wait() {
        let (mut client, server) = UnixStream::pair().unwrap();
        client
            .write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n")
            .unwrap();
        let stop = EventFd::new(0).unwrap();
        let t = Instant::now();
        let r = read_request(&server, stop.as_raw_fd(), t + Duration::from_millis(100), 1);
        assert_eq!(r.unwrap_err(), ApiError::Timeout { secs: 1 });
        assert!(t.elapsed() >= Duration::from_millis(100));
        stop.write(1).unwrap();
        let r = read_request(
            &server,
            stop.as_raw_fd(),
            Instant::now() + Duration::from_secs(30),
            30,
        );
        assert!(matches!(r, Ok(Incoming::Stopped)));
    }

    #[test]
    fn expect_continue_is_answered_before_the_body() {
        let (mut client, server) = UnixStream::pair().unwrap();
        client
            .write_all(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            .unwrap();
        let reader = std::thread::spawn(move || {
            let stop = EventFd::new(0).unwrap();
            read_request(
                &server,
                stop.as_raw_fd(),
                Instant::now() + Duration::from_secs(5),
                5,
            )
        });
        let mut got = [0u8; 25];
        std::io::Read::read_exact(&mut client, &mut got).unwrap();
        assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"{}").unwrap();
        match reader.join().unwrap() {
            Ok(Incoming::Request(r)) => assert_eq!(r.body, b"{}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn responses_carry_length_type_and_close() {
        let r = String::from_utf8(response_bytes(200, None, Some(b"{}"))).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\r\nContent-Length: 2\r\n") && r.contains("Connection: close"));
        assert!(r.ends_with("\r\n\r\n{}"));
        let r = String::from_utf8(response_bytes(204, None, None)).unwrap();
        assert!(r.starts_with("HTTP/1.1 204 No Content\r\n") && !r.contains("Content-Length"));
        let r = String::from_utf8(response_bytes(405, Some("PUT"), Some(b"{}"))).unwrap();
        assert!(r.contains("\r\nAllow: PUT\r\n"), "{r}");
    }
}
