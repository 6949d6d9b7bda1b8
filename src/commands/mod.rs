//! Host-side helper commands: `passvm devices`, `passvm bind`, `passvm unbind`.
//!
//! OWNER: discovery helper.

use std::process::ExitCode;

use crate::cli::Command;

/// Runs one helper command and returns the process exit code.
pub fn run(cmd: Command) -> ExitCode {
    eprintln!("passvm: {cmd:?}: not implemented yet");
    ExitCode::from(2)
}
