//! hbm-dra-driver: the Kubernetes DRA kubelet plugin for GPUs with their HBM.
//!
//! Exit codes of `run`: 0 clean shutdown (SIGTERM/SIGINT), 1 runtime failure (cannot bind a
//! socket, damaged checkpoint, no Kubernetes client), 2 bad flags or config.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hbm_dra_driver::config::{RunArgs, resolve};
use hbm_dra_driver::driver;
use hbm_shell::logging::{LogFormat, init_logging};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "hbm-dra-driver",
    version,
    about = "Kubernetes DRA driver for GPUs with their HBM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish this node's GPUs as ResourceSlices and serve the kubelet until SIGTERM.
    Run(RunArgs),
}

/// No Kubernetes client could be built.
#[derive(Debug, thiserror::Error)]
#[error("no Kubernetes client: {0} (run in a pod with a service account, or set KUBECONFIG)")]
struct NoClient(String);

impl hbm_shell::ExitStatus for NoClient {
    fn exit_code(&self) -> u8 {
        hbm_shell::exit::FAILURE
    }
}

/// The async runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime: {0}")]
struct NoRuntime(std::io::Error);

impl hbm_shell::ExitStatus for NoRuntime {
    fn exit_code(&self) -> u8 {
        hbm_shell::exit::FAILURE
    }
}

fn main() -> ExitCode {
    let Command::Run(args) = Cli::parse().command;
    let format = if args.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    init_logging("info", format);
    let settings = match resolve(&args) {
        Ok(settings) => settings,
        Err(error) => return hbm_shell::exit_with("hbm-dra-driver", &error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return hbm_shell::exit_with("hbm-dra-driver", &NoRuntime(error)),
    };
    runtime.block_on(serve(settings))
}

async fn serve(settings: hbm_dra_driver::config::Settings) -> ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(error) => return hbm_shell::exit_with("hbm-dra-driver", &NoClient(error.to_string())),
    };
    let stop = CancellationToken::new();
    let signals = tokio::spawn(plugin::run::wait_for_signal(stop.clone()));
    let result = driver::run(settings, client, stop).await;
    signals.abort();
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => hbm_shell::exit_with("hbm-dra-driver", &error),
    }
}
