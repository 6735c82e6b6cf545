//! The `run` command from settings to shutdown: flags/env/file resolved into [`Settings`], the
//! sysfs root checked, the async runtime built, metrics, Node labels and signal handling started
//! around the [`Manager`]. Every way it can fail is one [`RunError`] with its exit status (2 bad
//! flags, config or sysfs root; 1 runtime failure), which `main` prints through
//! `hbm_shell::exit_with`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hbm_shell::exit::{BAD_INPUT, FAILURE};
use tokio_util::sync::CancellationToken;
use topology::Inventory;

use crate::config::{self, ConfigError, RunArgs, Settings};
use crate::manager::{InventorySource, Manager, ManagerError, liveness_window};
use crate::metrics::Metrics;
use crate::node_labels::NodeLabeler;

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "--sysfs-root {} holds no sys/ directory (mount the host's /sys at <root>/sys and pass <root>)",
        root.display()
    )]
    NoSys { root: PathBuf },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(
        "--node-name {node} is set but no Kubernetes client could be built: {source} (run in a pod with a service account, or unset NODE_NAME)"
    )]
    KubeClient { node: String, source: kube::Error },
    #[error("cannot bind --metrics-addr {addr}: {source}")]
    MetricsBind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

impl hbm_shell::ExitStatus for RunError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::NoSys { .. } => BAD_INPUT,
            Self::Manager(ManagerError::SocketPathTooLong { .. }) => BAD_INPUT,
            Self::Runtime(_) | Self::KubeClient { .. } | Self::MetricsBind { .. } | Self::Manager(_) => FAILURE,
        }
    }
}

/// The settings `args` (with their `--config` file) resolve to, the sysfs root checked.
pub fn settings(args: &RunArgs) -> Result<Settings, RunError> {
    let loaded = match &args.config {
        Some(path) => config::load_file(path)?,
        None => config::LoadedConfig::default(),
    };
    let settings = config::resolve(args, loaded)?;
    if !settings.sysfs_root.join("sys").is_dir() {
        return Err(RunError::NoSys {
            root: settings.sysfs_root,
        });
    }
    Ok(settings)
}

/// Serves on a two-thread runtime until SIGTERM/SIGINT (or a fatal error).
pub fn run_blocking(settings: Settings) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(serve(settings))
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

/// Starts the metrics endpoint and the manager, and stops both on a signal.
pub async fn serve(settings: Settings) -> Result<(), RunError> {
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new(liveness_window(settings.poll_interval)));
    let labeler = node_labeler(settings.node_name.as_deref()).await?;
    let metrics_task = match settings.metrics_addr {
        Some(addr) => {
            let (bound, task) = crate::metrics::serve(addr, metrics.clone(), stop.clone())
                .await
                .map_err(|source| RunError::MetricsBind { addr, source })?;
            tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
            Some(task)
        }
        None => None,
    };
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
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// The Node labeler for `--node-name` (none without it).
async fn node_labeler(node_name: Option<&str>) -> Result<Option<NodeLabeler>, RunError> {
    let Some(node) = node_name else {
        return Ok(None);
    };
    let client = kube::Client::try_default()
        .await
        .map_err(|source| RunError::KubeClient {
            node: node.to_string(),
            source,
        })?;
    Ok(Some(NodeLabeler::new(client, node.to_string())))
}

/// Cancels `stop` on the first SIGTERM or SIGINT (the device plugin's and the DRA driver's).
pub async fn wait_for_signal(stop: CancellationToken) {
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
