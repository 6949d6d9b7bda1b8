//! passvm: parse the command line, run, turn the outcome into an exit code.

mod boot;
mod cli;
mod commands;
mod config;
mod console;
mod dry_run;
mod exit;
mod interrupts;
mod memory;
mod passthrough;
mod signals;
mod terminal;
mod vcpu;
mod vmm;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cmd) => commands::run(cmd),
        None => vmm::run(cli.vm),
    }
}
