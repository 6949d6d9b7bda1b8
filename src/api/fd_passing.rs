//! Descriptors on a Unix stream (SCM_RIGHTS), both ways: the API thread receives a
//! device's descriptor with `vm.add-device`, as Cloud Hypervisor's API receives the fds
//! of `add-net`, and `passvm remote` sends one. An unprivileged caller's launcher opens
//! the VFIO cdev and hands it over; passvm never needs the device node.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one read takes; the kernel drops (closes) any beyond them and
/// says so with `MSG_CTRUNC`.
pub const MAX_FDS: usize = 4;

/// Control-message room for [`MAX_FDS`] descriptors: `CMSG_SPACE(4 * MAX_FDS)`, as
/// 8-byte words so the buffer is aligned for `cmsghdr`.
const CMSG_WORDS: usize = 4;

/// What one [`recv`] read.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes read into the buffer (0: the peer closed its end).
    pub len: usize,
    /// Whether the kernel dropped descriptors that did not fit.
    pub truncated: bool,
}

/// One `recvmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC)` into `buf`, taking ownership of every
/// descriptor that came with the bytes (appended to `fds`).
pub fn recv(socket: &impl AsRawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is plain data; the fields that matter are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both live and as long as
    // the lengths say, for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen` bytes of control
    // messages; the CMSG_* macros walk them within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = (c.cmsg_len as usize).saturating_sub(header) / size_of::<RawFd>();
                for i in 0..count {
                    // SAFETY (within the block's): each is a new descriptor the kernel
                    // installed in this process for us; nobody else owns it.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: n as usize,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// One `sendmsg(MSG_NOSIGNAL)` of `buf` with `fds` (at most [`MAX_FDS`]) as SCM_RIGHTS.
/// Returns how many bytes went; the descriptors go with the first byte.
pub fn send(socket: &impl AsRawFd, buf: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS} descriptors go with one request"),
        ));
    }
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CMSG_WORDS];
    // SAFETY: msghdr is plain data; the fields that matter are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
        let (space, len) =
            unsafe { (libc::CMSG_SPACE(bytes as u32), libc::CMSG_LEN(bytes as u32)) };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as usize;
        // SAFETY: `control` holds CMSG_SPACE(4 * MAX_FDS) bytes, at least `space`; the
        // first header and its data lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = len as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both live for the call;
    // the kernel only reads them.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"through the socket").unwrap();
        assert_eq!(send(&a, b"hello", &[file.as_raw_fd()]).unwrap(), 5);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let got = recv(&b, &mut buf, &mut fds).unwrap();
        assert_eq!((&buf[..got.len], got.truncated), (&b"hello"[..], false));
        assert_eq!(fds.len(), 1);
        let mut theirs = std::fs::File::from(fds.pop().unwrap());
        theirs.rewind().unwrap();
        let mut s = String::new();
        theirs.read_to_string(&mut s).unwrap();
        assert_eq!(s, "through the socket", "the same open file");
        // Plain bytes, then nothing waiting (MSG_DONTWAIT), then the peer's close.
        send(&a, b"x", &[]).unwrap();
        assert_eq!(recv(&b, &mut buf, &mut fds).unwrap().len, 1);
        assert!(fds.is_empty());
        assert_eq!(
            recv(&b, &mut buf, &mut fds).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(a);
        assert_eq!(recv(&b, &mut buf, &mut fds).unwrap().len, 0);
    }

    #[test]
    fn more_descriptors_than_fit_are_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let many = [f.as_raw_fd(); MAX_FDS + 2];
        assert!(
            send(&a, b"x", &many).is_err(),
            "the sender refuses too many"
        );
        // A raw sender with more than the receiver has room for.
        let mut iov = libc::iovec {
            iov_base: b"y".as_ptr().cast_mut().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        let bytes = std::mem::size_of_val(&many);
        // SAFETY: plain data, then sizes computed by the CMSG macros; `control` (64
        // bytes) holds CMSG_SPACE(24) = 40, and the header and data written lie in it.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(bytes as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(
                many.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                many.len(),
            );
            libc::sendmsg(a.as_raw_fd(), &msg, 0)
        };
        assert_eq!(n, 1);
        let mut buf = [0u8; 4];
        let mut fds = Vec::new();
        let got = recv(&b, &mut buf, &mut fds).unwrap();
        assert_eq!(got.len, 1);
        assert!(got.truncated, "the kernel says it dropped some");
        assert!(fds.len() <= MAX_FDS, "and closed them: {} kept", fds.len());
        // Exactly as many as fit arrive whole.
        send(&a, b"z", &[f.as_raw_fd(); MAX_FDS]).unwrap();
        fds.clear();
        let got = recv(&b, &mut buf, &mut fds).unwrap();
        assert_eq!((got.len, fds.len(), got.truncated), (1, MAX_FDS, false));
    }
}
