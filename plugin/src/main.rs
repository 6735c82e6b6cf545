//! hbm-device-plugin: advertises each passthrough-ready GPU together with its HBM regions as one
//! Kubernetes device. This file only wires the commands to the library (`plugin::run`).
//!
//! Exit codes of `run`: 0 clean shutdown (SIGTERM/SIGINT), 1 runtime failure (cannot bind, no
//! inotify, no Kubernetes client with --node-name), 2 bad flags or config, or a --sysfs-root
//! without sys/.
//! Exit codes of `discover`: 0 inventory printed, 2 unusable sysfs root or bad config.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hbm_shell::logging::{LogFormat, init_logging};
use plugin::config::{self, RunArgs};

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
    /// Serve the device plugin (one gRPC server per resource) until SIGTERM.
    Run(Box<RunArgs>),
    /// Show which GPUs own which HBM regions on this host (table, or --json for the contract).
    Discover(topology::cli::DiscoverArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Discover(args) => topology::cli::run_discover(&args),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let format = match args.log_format {
        config::LogFormat::Text => LogFormat::Text,
        config::LogFormat::Json => LogFormat::Json,
    };
    init_logging("info", format);
    match plugin::run::settings(args).and_then(plugin::run::run_blocking) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => hbm_shell::exit_with("hbm-device-plugin", &error),
    }
}
