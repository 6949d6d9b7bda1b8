//! passvm: parse the command line, run, turn the outcome into an exit code.

mod acpi;
mod api;
mod boot;
mod cli;
mod commands;
mod config;
mod console;
mod dry_run;
mod exit;
mod hotplug;
mod memory;
mod passthrough;
mod placement;
mod seccomp;
mod signals;
mod terminal;
mod timings;
mod vcpu;
mod vcpu_state;
mod vmm;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // vfio-ioctls warns about every IRQ index a device lacks (ERR, REQ, MSI on an mdev) at
    // each start; passvm reports what matters itself. RUST_LOG overrides this.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,vfio_ioctls=error"),
    )
    .init();
    let cli = cli::Cli::parse();
    match cli.command {
        Some(cmd) => commands::run(cmd),
        None => vmm::run(cli.vm),
    }
}
