//! The client side of the API, for `passvm remote`: one request on a new connection (a
//! fixed request line and headers, the JSON body, a descriptor with SCM_RIGHTS when the
//! device is one), and the answer's head parsed by `httparse`.

use std::io::{self, Read};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::fd_passing;

/// The largest answer read (`vm.info` of a VM with many devices is a few KiB).
const MAX_RESPONSE: usize = 4 << 20;

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body (empty for 204).
    pub body: Vec<u8>,
}

/// The request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing to connect to.
    #[error(
        "cannot connect to {path} ({source}): is passvm running with --api-socket path={path}?"
    )]
    Connect {
        /// The socket path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The exchange broke off.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The step.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Something answered that is not passvm's API.
    #[error("{path}: the answer is not an HTTP response: {why}")]
    BadResponse {
        /// The socket path.
        path: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Sends `method path` with `body` (JSON) and `fd` (SCM_RIGHTS) on a new connection to
/// `socket` and reads the answer, waiting at most `timeout` for it.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    fd: Option<RawFd>,
    timeout: Duration,
) -> Result<ClientResponse, ClientError> {
    let shown = socket.display().to_string();
    let io_err = |what| {
        let path = shown.clone();
        move |source| ClientError::Io { path, what, source }
    };
    let conn = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: shown.clone(),
        source,
    })?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|()| conn.set_write_timeout(Some(timeout)))
        .map_err(io_err("setting timeouts"))?;
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let fds: Vec<RawFd> = fd.into_iter().collect();
    let mut sent = 0;
    while sent < bytes.len() {
        // The descriptor goes with the first bytes only.
        let with = if sent == 0 { fds.as_slice() } else { &[] };
        match fd_passing::send(&conn, &bytes[sent..], with) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("sending the request")(e)),
        }
    }
    let mut answer = Vec::new();
    (&conn)
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut answer)
        .map_err(io_err("reading the answer"))?;
    parse_response(&answer).map_err(|why| ClientError::BadResponse { path: shown, why })
}

/// The status and body of a whole answer (the server closes after it).
pub fn parse_response(bytes: &[u8]) -> Result<ClientResponse, String> {
    let mut rest = bytes;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if rest.is_empty() => {
                return Err("the connection closed without an answer".into())
            }
            Ok(httparse::Status::Partial) => return Err("the answer's head is cut off".into()),
            Err(e) => return Err(e.to_string()),
        };
        let status = resp.code.unwrap_or(0);
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| "a Content-Length that is not a number".to_string())
            })
            .transpose()?;
        let after = rest.get(len..).unwrap_or_default();
        // An interim answer (100 Continue) comes before the real one.
        if (100..200).contains(&status) {
            rest = after;
            continue;
        }
        let body = match length {
            Some(n) => after
                .get(..n)
                .ok_or_else(|| format!("the body is cut off ({} of {n} bytes)", after.len()))?,
            None => after,
        };
        return Ok(ClientResponse {
            status,
            body: body.to_vec(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n{\"error\":\"x\"}").unwrap();
        assert_eq!(r.body, b"{\"error\":\"x\"}", "no length: up to the close");
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\nContent-",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(parse_response(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_server_is_a_connect_error_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let e = call(
            &dir.path().join("none.sock"),
            "GET",
            "/api/v1/vmm.ping",
            None,
            None,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }));
        assert!(
            e.to_string()
                .contains("is passvm running with --api-socket path="),
            "{e}"
        );
    }
}
