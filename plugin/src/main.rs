//! hbm-device-plugin: advertises each passthrough-ready GPU together with its HBM regions as one
//! Kubernetes device.
//!
//! Exit codes of `discover`: 0 inventory printed, 2 unusable sysfs root or bad config.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hbm-device-plugin",
    version,
    about = "Kubernetes device plugin for GPUs with their HBM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show which GPUs own which HBM regions on this host (table, or --json for the contract).
    Discover(topology::cli::DiscoverArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Discover(args) => topology::cli::run_discover(&args),
    }
}
