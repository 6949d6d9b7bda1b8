//! Builds a VM from the command line and runs it to completion.
//!
//! OWNER: VMM-core helper.

use std::process::ExitCode;

use crate::cli::VmArgs;

/// Runs the VM described by `args` and returns the process exit code.
pub fn run(args: VmArgs) -> ExitCode {
    if args.kernel.is_none() {
        eprintln!("passvm: nothing to do: give --kernel PATH to boot a VM, or see --help");
        return ExitCode::from(2);
    }
    eprintln!("passvm: running a VM is not implemented yet");
    ExitCode::from(2)
}
