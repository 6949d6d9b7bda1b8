//! The control API (`--api-socket`, docs/api.md): HTTP/1.1 and JSON on a Unix socket,
//! with Cloud Hypervisor's paths and bodies where the two overlap.
//!
//! Threads: the `api` thread ([`server`]) owns the socket. It reads one request at a
//! time within a deadline and size limits ([`http`], the head parsed by `httparse`,
//! descriptors by [`fd_passing`]), parses and validates it into a typed request
//! ([`request`]) and posts it through the [`mailbox`] to the main thread's event loop,
//! where [`handler`] answers it with what the VM is and has: the stop latch, the power
//! button, the devices and the [`hotplug::Hotplug`] owner. The socket thread never
//! touches the VM, and a request never stops it: errors ([`error`]) are JSON answers
//! with an HTTP status and the fix. [`client`] is `passvm remote`'s side.
//!
//! Bottom of the folder (imported, importing nothing here): `error.rs`, `response.rs`,
//! `fd_passing.rs`; `socket.rs` stands alone.

pub mod client;
pub mod error;
pub mod fd_passing;
pub mod handler;
pub mod hotplug;
pub mod http;
pub mod mailbox;
pub mod request;
pub mod response;
pub mod server;
pub mod socket;

use std::io;
use std::sync::Arc;

use devices::power::PowerButton;

use crate::config::VmConfig;
use crate::exit::VmExit;
use crate::passthrough::ListedDevice;
use crate::seccomp::ThreadFilter;
use handler::{ApiHandler, VmControl};
use hotplug::{Hotplug, NoHotplugSlots};
use response::{ConfigSummary, DeviceInfo, HostDevice};
use server::ApiServer;
use socket::{ApiListener, ApiSocketError};

/// What the VM prepares for its API while it is built (before any thread runs).
pub struct ApiSetup {
    /// The bound socket.
    pub socket: ApiListener,
    /// The configuration `vm.info` reports.
    pub config: ConfigSummary,
    /// The devices given at start.
    pub devices: Vec<DeviceInfo>,
    /// The guest's power button (the one SIGPWR presses).
    pub button: Arc<PowerButton>,
    /// The owner of hot-plugging: [`NoHotplugSlots`] until the VM has root ports.
    pub hotplug: Box<dyn Hotplug>,
}

/// Binds the API socket of `cfg` (`None` without `--api-socket`) for a VM whose
/// devices are `devices` and whose power button is `button`.
pub fn prepare(
    cfg: &VmConfig,
    button: &Arc<PowerButton>,
    devices: &[ListedDevice],
) -> Result<Option<ApiSetup>, ApiSocketError> {
    let Some(socket) = &cfg.api_socket else {
        return Ok(None);
    };
    Ok(Some(ApiSetup {
        socket: ApiListener::open(socket)?,
        config: ConfigSummary::from(cfg),
        devices: devices.iter().map(device_info).collect(),
        button: button.clone(),
        hotplug: Box::new(NoHotplugSlots),
    }))
}

/// Starts the `api` thread (under `filter`) and returns the event loop's handler for
/// it, and the thread, which stops when dropped.
pub fn start(
    setup: ApiSetup,
    exit: Arc<VmExit>,
    filter: ThreadFilter,
) -> io::Result<(ApiHandler, ApiServer)> {
    let (mailbox, inbox) = mailbox::pair()?;
    let handler = ApiHandler::new(
        inbox,
        VmControl {
            exit: exit.clone(),
            button: setup.button,
            config: setup.config,
            devices: setup.devices,
            hotplug: setup.hotplug,
        },
    );
    let server = ApiServer::spawn(setup.socket, mailbox, filter, exit)?;
    Ok((handler, server))
}

/// What `vm.info` lists for a device given at start.
pub fn device_info(d: &ListedDevice) -> DeviceInfo {
    DeviceInfo {
        id: d.id.clone(),
        host: HostDevice {
            name: d.host_name.clone(),
            bdf: d.host_bdf.map(|b| b.to_string()),
            sysfs: d.sysfs.display().to_string(),
        },
        given_as: d.given_as.clone(),
        guest_bdf: format!("0000:00:{:02x}.{:x}", d.slot, d.function),
        backend: d.backend.to_string(),
        hotplugged: false,
    }
}
