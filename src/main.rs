//! passvm: parse the command line, run, turn the outcome into an exit code.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cmd) => {
            eprintln!("passvm: {cmd:?}: not implemented yet");
            ExitCode::from(2)
        }
        None if cli.vm.kernel.is_some() => {
            eprintln!("passvm: running a VM is not implemented yet");
            ExitCode::from(2)
        }
        None => {
            eprintln!("passvm: nothing to do: give --kernel PATH to boot a VM, or see --help");
            ExitCode::from(2)
        }
    }
}
