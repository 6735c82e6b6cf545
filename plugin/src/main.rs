//! hbm-device-plugin: advertises each passthrough-ready GPU together with its HBM regions as one
//! Kubernetes device.
//!
//! Exit codes of `run`: 0 clean shutdown (SIGTERM/SIGINT), 1 runtime failure (cannot bind, no
//! inotify, no Kubernetes client with --node-name), 2 bad flags or config, or a --sysfs-root
//! without sys/.
//! Exit codes of `discover`: 0 inventory printed, 2 unusable sysfs root or bad config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use plugin::config::{self, RunArgs};
use plugin::manager::{InventorySource, Manager, liveness_window};
use plugin::metrics::Metrics;
use plugin::node_labels::NodeLabeler;
use tokio_util::sync::CancellationToken;
use topology::Inventory;

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
    Run(RunArgs),
    /// Show which GPUs own which HBM regions on this host (table, or --json for the contract).
    Discover(topology::cli::DiscoverArgs),
}

/// Discovery through the topology crate, on the configured root.
struct TopologySource {
    root: PathBuf,
}

impl InventorySource for TopologySource {
    fn discover(&self, discovery: &topology::DiscoveryConfig) -> Result<Inventory, String> {
        topology::discover(&self.root, discovery).map_err(|e| e.to_string())
    }
}

fn init_tracing(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Discover(args) => topology::cli::run_discover(&args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_tracing(args.log_format);
    let loaded = match &args.config {
        Some(path) => match config::load_file(path) {
            Ok(loaded) => loaded,
            Err(error) => {
                eprintln!("hbm-device-plugin: {error}");
                return ExitCode::from(2);
            }
        },
        None => config::LoadedConfig::default(),
    };
    let settings = match config::resolve(&args, loaded) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("hbm-device-plugin: {error}");
            return ExitCode::from(2);
        }
    };
    if !settings.sysfs_root.join("sys").is_dir() {
        eprintln!(
            "hbm-device-plugin: --sysfs-root {} holds no sys/ directory (mount the host's /sys at <root>/sys and pass <root>)",
            settings.sysfs_root.display()
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("hbm-device-plugin: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(settings))
}

async fn serve(settings: config::Settings) -> ExitCode {
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new(liveness_window(settings.poll_interval)));
    let labeler = match &settings.node_name {
        Some(node) => match kube::Client::try_default().await {
            Ok(client) => Some(NodeLabeler::new(client, node.clone())),
            Err(error) => {
                eprintln!(
                    "hbm-device-plugin: --node-name {node} is set but no Kubernetes client could be built: {error} (run in a pod with a service account, or unset NODE_NAME)"
                );
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let mut metrics_task = None;
    if let Some(addr) = settings.metrics_addr {
        match plugin::metrics::serve(addr, metrics.clone(), stop.clone()).await {
            Ok((bound, task)) => {
                tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
                metrics_task = Some(task);
            }
            Err(error) => {
                eprintln!("hbm-device-plugin: cannot bind --metrics-addr {addr}: {error}");
                return ExitCode::from(1);
            }
        }
    }
    let source = Arc::new(TopologySource {
        root: settings.sysfs_root.clone(),
    });
    let manager = Manager::new(settings, source, metrics, labeler, stop.clone());
    let signals = tokio::spawn(wait_for_signal(stop.clone()));
    let result = manager.run().await;
    stop.cancel();
    signals.abort();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("hbm-device-plugin: {error}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    stop.cancel();
}
