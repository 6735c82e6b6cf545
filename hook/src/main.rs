//! hbm-hook: the libvirt domain-XML hook and its tools.
//!
//! Exit codes of `discover`: 0 inventory printed, 2 unusable sysfs root or bad config.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hbm-hook",
    version,
    about = "Gives VMs a passed-through GPU together with its HBM as a NUMA node"
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Discover(args) => topology::cli::run_discover(&args),
    }
}
