//! The hand-off between the API thread and the main thread's event loop: a channel of
//! requests, each with its own reply channel, and an eventfd the loop watches. The API
//! thread never touches the VM: it posts a validated request and waits for the answer the
//! event loop gives on its own thread, where the VM's state lives.

use std::io;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::error::ApiError;
use super::request::ApiRequest;
use super::response::ApiResponse;

/// The event loop's answer to one request.
pub type Reply = Result<ApiResponse, ApiError>;

/// One request and where its answer goes.
#[derive(Debug)]
pub struct Envelope {
    request: ApiRequest,
    reply: ReplyTo,
}

/// Where one request's answer goes.
#[derive(Debug)]
pub struct ReplyTo(mpsc::SyncSender<Reply>);

impl Envelope {
    /// The request, and where to answer it.
    pub fn open(self) -> (ApiRequest, ReplyTo) {
        (self.request, self.reply)
    }
}

impl ReplyTo {
    /// Sends the answer back (a client that gave up is no error).
    pub fn answer(self, reply: Reply) {
        let _ = self.0.send(reply);
    }
}

/// The API thread's end.
#[derive(Debug)]
pub struct Mailbox {
    tx: mpsc::Sender<Envelope>,
    wake: EventFd,
}

/// The event loop's end.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Envelope>,
    wake: EventFd,
}

/// A connected pair.
pub fn pair() -> io::Result<(Mailbox, Inbox)> {
    let wake = EventFd::new(EFD_NONBLOCK)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        Mailbox {
            tx,
            wake: wake.try_clone()?,
        },
        Inbox { rx, wake },
    ))
}

impl Mailbox {
    /// Posts `request` and waits up to `timeout` for its answer. The event loop gone
    /// (the VM is tearing down) is [`ApiError::Stopping`].
    pub fn call(&self, request: ApiRequest, timeout: Duration) -> Reply {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send(Envelope {
                request,
                reply: ReplyTo(reply),
            })
            .map_err(|_| ApiError::Stopping)?;
        self.wake
            .write(1)
            .map_err(|e| ApiError::Internal(format!("cannot wake the event loop: {e}")))?;
        match answer.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Disconnected) => Err(ApiError::Stopping),
            Err(RecvTimeoutError::Timeout) => Err(ApiError::Unavailable {
                message: format!(
                    "the event loop did not answer within {} s",
                    timeout.as_secs()
                ),
                hint: "the VMM's main thread is busy (a long device operation, or stuck: \
                       `kill -USR1` logs where the vCPUs are); try again"
                    .into(),
            }),
        }
    }
}

impl Inbox {
    /// The eventfd the event loop watches.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Clears the wake-up and returns every request posted so far.
    pub fn take(&self) -> Vec<Envelope> {
        let _ = self.wake.read();
        let mut out = Vec::new();
        loop {
            match self.rx.try_recv() {
                Ok(e) => out.push(e),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_answered_through_the_inbox() {
        let (mailbox, inbox) = pair().unwrap();
        let server = std::thread::spawn(move || loop {
            let posted = inbox.take();
            if let Some(e) = posted.into_iter().next() {
                let (request, reply) = e.open();
                assert!(matches!(request, ApiRequest::Ping));
                reply.answer(Ok(ApiResponse::NoContent));
                return inbox;
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        let r = mailbox.call(ApiRequest::Ping, Duration::from_secs(10));
        assert_eq!(r, Ok(ApiResponse::NoContent));
        let inbox = server.join().unwrap();
        // No answer in time: 503, and the VM goes on.
        let r = mailbox.call(ApiRequest::Info, Duration::from_millis(20));
        assert_eq!(r.unwrap_err().status(), 503);
        assert_eq!(inbox.take().len(), 1, "the late request is still there");
        // The event loop gone: the VM is stopping.
        drop(inbox);
        assert_eq!(
            mailbox.call(ApiRequest::Info, Duration::from_secs(1)),
            Err(ApiError::Stopping)
        );
    }
}
