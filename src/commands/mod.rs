//! Host-side helper commands: `passvm devices`, `passvm bind`, `passvm unbind`,
//! `passvm udev` (the /dev/vfio/<bus>/<name> rule), and `passvm remote` (the control
//! API's client).

mod bind;
mod json;
mod listing;
mod remote;
mod udev;

use std::process::ExitCode;

use devices::vfio::discovery::DiscoveryError;

use crate::cli::Command;

/// Runs one helper command and returns the process exit code.
pub fn run(cmd: Command) -> ExitCode {
    let result = match cmd {
        Command::Devices { all, json } => listing::run(all, json),
        Command::Bind { bdf, force } => bind::bind(&bdf, force),
        Command::Unbind { bdf } => bind::unbind(&bdf),
        Command::Remote { api_socket, action } => return remote::run(&api_socket, &action),
        Command::Udev { action } => return udev::run(&action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &DiscoveryError) -> ExitCode {
    eprintln!("passvm: {e}");
    ExitCode::from(e.exit_code())
}
