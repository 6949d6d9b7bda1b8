//! [`ApiError`]: every way a control-API request can fail, each with its HTTP status and
//! the actionable fix (the `hint` of the JSON error body). The bottom of `src/api/`: the
//! other files return it, it imports none of them.

use serde::{Deserialize, Serialize};

/// Where the API is described for a user who got a request wrong.
const DOCS: &str = "docs/api.md";

/// A request the API cannot carry out. The message says what is wrong (for `add-device`,
/// the same message `--device` prints); [`ApiError::hint`] says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The bytes on the socket are not an HTTP/1.1 request (400).
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// The request line and headers do not fit the head limit (431).
    #[error("the request's line and headers are over {limit} bytes")]
    HeadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is larger than any request of this API needs (413).
    #[error("the request body is {size} bytes; the API takes at most {limit}")]
    BodyTooLarge {
        /// What Content-Length announced.
        size: u64,
        /// The limit in bytes.
        limit: usize,
    },
    /// A body without a Content-Length (chunked transfer encoding) (411).
    #[error("a request body needs a Content-Length header (chunked bodies are not taken)")]
    LengthRequired,
    /// The request did not arrive in time (408): a slow or stuck client.
    #[error("the request did not arrive within {secs} s")]
    Timeout {
        /// The deadline in seconds.
        secs: u64,
    },
    /// No endpoint at this path (404).
    #[error("no endpoint {path}")]
    UnknownEndpoint {
        /// The path as requested.
        path: String,
    },
    /// A known endpoint asked with the wrong method (405).
    #[error("{path} takes {allowed}, not {method}")]
    WrongMethod {
        /// The method used.
        method: String,
        /// The endpoint's path.
        path: String,
        /// The method it takes.
        allowed: &'static str,
    },
    /// The body is not what the endpoint takes: bad JSON, an unknown field, a wrong type
    /// (400).
    #[error("{endpoint}: {why}")]
    BadBody {
        /// The endpoint, e.g. `vm.add-device`.
        endpoint: &'static str,
        /// What is wrong (serde_json's message for JSON errors).
        why: String,
        /// A body the endpoint takes.
        example: &'static str,
    },
    /// A device description that `--device` would refuse too; the message is its parser's
    /// (400).
    #[error("{0}")]
    BadDevice(String),
    /// No device with this id (404).
    #[error("no device with id {id:?}")]
    UnknownDevice {
        /// The id asked for.
        id: String,
    },
    /// The id is already a device's (409).
    #[error("a device with id {id:?} is already in the VM")]
    IdTaken {
        /// The id.
        id: String,
    },
    /// The request conflicts with the VM's devices (409), e.g. the device is already
    /// assigned to this VM.
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
        /// What to do.
        hint: String,
    },
    /// The VM is stopping: it takes no more requests (503).
    #[error("the VM is stopping")]
    Stopping,
    /// The VM cannot do this now or at all in its configuration (503).
    #[error("{message}")]
    Unavailable {
        /// Why not.
        message: String,
        /// What to do.
        hint: String,
    },
    /// passvm failed to carry out a valid request (500).
    #[error("{0}")]
    Internal(String),
}

/// The JSON body of every error response: `{"error": "...", "hint": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong ([`ApiError`]'s message).
    pub error: String,
    /// What to do about it.
    pub hint: String,
}

impl ApiError {
    /// The answer of a VM without a hot-pluggable slot to `vm.add-device` and
    /// `vm.remove-device`: true of every VM until passvm creates PCIe root ports, and of
    /// a VM started without them afterwards.
    pub fn no_hotplug_slot() -> Self {
        Self::Unavailable {
            message: "this VM has no hot-pluggable slot: start it with --pcie-ports N".into(),
            hint: "devices are hot-plugged into PCIe root ports (docs/hotplug.md), which this \
                   VM was started without; until then give the device with --device when \
                   passvm starts"
                .into(),
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) | Self::BadBody { .. } | Self::BadDevice(_) => 400,
            Self::UnknownEndpoint { .. } | Self::UnknownDevice { .. } => 404,
            Self::WrongMethod { .. } => 405,
            Self::Timeout { .. } => 408,
            Self::IdTaken { .. } | Self::Conflict { .. } => 409,
            Self::LengthRequired => 411,
            Self::BodyTooLarge { .. } => 413,
            Self::HeadTooLarge { .. } => 431,
            Self::Internal(_) => 500,
            Self::Stopping | Self::Unavailable { .. } => 503,
        }
    }

    /// What the client should do instead.
    pub fn hint(&self) -> String {
        match self {
            Self::Malformed(_) | Self::HeadTooLarge { .. } | Self::Timeout { .. } => format!(
                "send one HTTP/1.1 request per connection, whole and at once, as `passvm \
                 remote` and `curl --unix-socket` do ({DOCS})"
            ),
            Self::BodyTooLarge { .. } => {
                format!("every request body of this API is a small JSON object ({DOCS})")
            }
            Self::LengthRequired => "send the body with a Content-Length header".into(),
            Self::UnknownEndpoint { .. } => format!(
                "the endpoints are GET /api/v1/vmm.ping, GET /api/v1/vm.info and PUT \
                 /api/v1/vm.add-device, vm.remove-device, vm.power-button, vm.shutdown, \
                 vmm.shutdown ({DOCS})"
            ),
            Self::WrongMethod { allowed, path, .. } => format!("use {allowed} {path}"),
            Self::BadBody { example, .. } => format!("send a body like {example} ({DOCS})"),
            Self::BadDevice(_) => format!(
                "the body takes the keys --device takes (path, id, bdf, managed, rombar, \
                 romfile, addr; `passvm --help` lists every form of path), or the device's \
                 descriptor with SCM_RIGHTS instead of a path ({DOCS})"
            ),
            Self::UnknownDevice { .. } => {
                "GET /api/v1/vm.info (passvm remote info) lists the devices' ids".into()
            }
            Self::IdTaken { .. } => {
                "choose another id=, or remove the device that has it first".into()
            }
            Self::Conflict { hint, .. } | Self::Unavailable { hint, .. } => hint.clone(),
            Self::Stopping => "the VM is shutting down; passvm exits once it is down".into(),
            Self::Internal(_) => {
                "a passvm bug or a host failure: passvm's log (stderr) has the details".into()
            }
        }
    }

    /// The JSON error body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            hint: self.hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant, with the status the API documents for it.
    pub(crate) fn every_error() -> Vec<(ApiError, u16)> {
        vec![
            (ApiError::Malformed("x".into()), 400),
            (ApiError::HeadTooLarge { limit: 8192 }, 431),
            (
                ApiError::BodyTooLarge {
                    size: 1 << 20,
                    limit: 65536,
                },
                413,
            ),
            (ApiError::LengthRequired, 411),
            (ApiError::Timeout { secs: 10 }, 408),
            (
                ApiError::UnknownEndpoint {
                    path: "/api/v1/vm.boot".into(),
                },
                404,
            ),
            (
                ApiError::WrongMethod {
                    method: "GET".into(),
                    path: "/api/v1/vm.shutdown".into(),
                    allowed: "PUT",
                },
                405,
            ),
            (
                ApiError::BadBody {
                    endpoint: "vm.remove-device",
                    why: "missing field `id`".into(),
                    example: r#"{"id": "disk0"}"#,
                },
                400,
            ),
            (ApiError::BadDevice("--device \"x\": ...".into()), 400),
            (ApiError::UnknownDevice { id: "nic".into() }, 404),
            (ApiError::IdTaken { id: "nic".into() }, 409),
            (
                ApiError::Conflict {
                    message: "m".into(),
                    hint: "h".into(),
                },
                409,
            ),
            (ApiError::Stopping, 503),
            (ApiError::no_hotplug_slot(), 503),
            (ApiError::Internal("x".into()), 500),
        ]
    }

    #[test]
    fn every_error_has_its_status_and_a_hint() {
        for (e, status) in every_error() {
            assert_eq!(e.status(), status, "{e:?}");
            let body = e.body();
            assert!(!body.error.is_empty() && !body.hint.is_empty(), "{e:?}");
            assert_eq!(body.error, e.to_string());
        }
        let e = ApiError::WrongMethod {
            method: "GET".into(),
            path: "/api/v1/vm.shutdown".into(),
            allowed: "PUT",
        };
        assert_eq!(e.to_string(), "/api/v1/vm.shutdown takes PUT, not GET");
        assert_eq!(e.hint(), "use PUT /api/v1/vm.shutdown");
        assert_eq!(
            ApiError::no_hotplug_slot().to_string(),
            "this VM has no hot-pluggable slot: start it with --pcie-ports N"
        );
    }

    #[test]
    fn the_error_body_is_the_documented_json() {
        let json = serde_json::to_value(ApiError::UnknownDevice { id: "d9".into() }.body())
            .expect("serialises");
        assert_eq!(json["error"], "no device with id \"d9\"");
        assert!(json["hint"].as_str().is_some_and(|h| h.contains("vm.info")));
        assert_eq!(json.as_object().map(|o| o.len()), Some(2));
    }
}
