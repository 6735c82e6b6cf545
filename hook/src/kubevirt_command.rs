//! The KubeVirt front end's shells:
//!
//! - `hbm-hook kubevirt-sidecar [--socket-dir DIR] [--name NAME] [--priority N]
//!   [--sysfs-root DIR | --topology FILE] [--config FILE]`: the gRPC hook sidecar
//!   ([`crate::kubevirt`]). Exit codes: 0 stopped by Shutdown/SIGTERM, 1 runtime error, 2 bad
//!   arguments, config, topology or socket directory.
//! - KubeVirt's sidecar-shim convention: `hbm-hook onDefineDomain --vmi JSON --domain XML` (or the
//!   binary run under the name `onDefineDomain`) prints the new domain XML (the input when there
//!   is nothing to do); `preCloudInitIso --vmi JSON --cloud-init JSON` prints the cloud-init JSON
//!   back. Exit codes: 0 ok, 1 I/O, 2 bad input (VMI, annotations, XML, config), 3 `required` and
//!   this node cannot give the HBM. Errors are one line on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::HookConfig;
use crate::kubevirt::{DEFAULT_NAME, DEFAULT_SOCKET_DIR, InventoryFn, Sidecar, SidecarSettings, termination_signal};
use crate::kubevirt_policy::{DefineOutcome, define_domain};
use crate::rewrite_command::load_topology;
use hbm_rewrite::{Dialect, PolicyMode, RewriteOptions};

/// argv[0] basename KubeVirt's sidecar shim runs for OnDefineDomain.
pub const SHIM_ON_DEFINE_DOMAIN: &str = "onDefineDomain";
/// argv[0] basename KubeVirt's sidecar shim runs for PreCloudInitIso.
pub const SHIM_PRE_CLOUD_INIT_ISO: &str = "preCloudInitIso";

/// Where the node's inventory comes from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InventoryArgs {
    /// Scan this sysfs/procfs root (the node's /sys seen read-only); default: the config's
    /// `sysfs_root`, else `/`.
    #[arg(long, value_name = "DIR", conflicts_with = "topology")]
    pub sysfs_root: Option<PathBuf>,
    /// Use this `discover --json` document instead of scanning.
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Config file (default /etc/hbm-passthrough/hook.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The node's defaults for VMIs that do not choose (their `hbm-passthrough.dev/` annotations
/// win); unset, the config file's `rewrite` section decides.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmiDefaultsArgs {
    /// Default SPM marking: kernel-cmdline, memmap-type[=spm|reserved|normal], sp-mem or none.
    #[arg(long, value_name = "D", value_parser = |s: &str| s.parse::<Dialect>())]
    pub dialect: Option<Dialect>,
    /// Default policy: off, auto or required.
    #[arg(long, value_name = "P", value_parser = |s: &str| s.parse::<PolicyMode>())]
    pub policy: Option<PolicyMode>,
}

impl VmiDefaultsArgs {
    /// `base` (from the config file) with these flags applied.
    pub fn apply(&self, mut base: RewriteOptions) -> RewriteOptions {
        if let Some(d) = self.dialect {
            base.dialect = d;
        }
        if let Some(p) = self.policy {
            base.policy = p;
        }
        base
    }
}

/// `hbm-hook kubevirt-sidecar`.
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarArgs {
    /// Directory virt-launcher polls for hook sockets.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SOCKET_DIR)]
    pub socket_dir: PathBuf,
    /// Sidecar name (Info's name and the socket file's stem).
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// OnDefineDomain priority among sidecars (higher runs first).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    #[command(flatten)]
    pub inventory: InventoryArgs,
    #[command(flatten)]
    pub defaults: VmiDefaultsArgs,
}

/// `hbm-hook onDefineDomain` (sidecar-shim convention).
#[derive(Debug, Clone, clap::Args)]
pub struct ShimDefineArgs {
    /// The VMI as JSON.
    #[arg(long)]
    pub vmi: String,
    /// The domain XML virt-launcher is about to define.
    #[arg(long)]
    pub domain: String,
    #[command(flatten)]
    pub inventory: InventoryArgs,
    #[command(flatten)]
    pub defaults: VmiDefaultsArgs,
}

/// `hbm-hook preCloudInitIso` (sidecar-shim convention).
#[derive(Debug, Clone, clap::Args)]
pub struct ShimCloudInitArgs {
    /// The VMI as JSON.
    #[arg(long)]
    pub vmi: String,
    /// The cloud-init data as JSON; printed back unchanged.
    #[arg(long = "cloud-init")]
    pub cloud_init: String,
}

/// Why the shell could not even start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Topology(#[from] crate::rewrite_command::RewriteCommandError),
}

/// The host defaults and the inventory function the arguments and config describe.
pub fn settings_from(args: &InventoryArgs) -> Result<(HookConfig, InventoryFn), StartError> {
    let config = HookConfig::load(args.config.as_deref())?;
    let inventory: InventoryFn = match &args.topology {
        Some(path) => {
            let inv = Arc::new(load_topology(path)?);
            Arc::new(move || Ok(inv.as_ref().clone()))
        }
        None => {
            let root = args
                .sysfs_root
                .clone()
                .or_else(|| config.sysfs_root.clone())
                .unwrap_or_else(|| PathBuf::from("/"));
            let discovery = config.discovery.clone();
            Arc::new(move || topology::discover(&root, &discovery).map_err(|e| e.to_string()))
        }
    };
    Ok((config, inventory))
}

fn fail(prefix: &str, message: &str, code: u8) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "{prefix}: {}", message.replace('\n', " "));
    ExitCode::from(code)
}

/// `hbm-hook kubevirt-sidecar`: serves until Shutdown or SIGTERM.
pub fn run_sidecar(args: &SidecarArgs) -> ExitCode {
    const PREFIX: &str = "hbm-hook kubevirt-sidecar";
    let (config, inventory) = match settings_from(&args.inventory) {
        Ok(s) => s,
        Err(e) => return fail(PREFIX, &e.to_string(), 2),
    };
    // Discovery runs per call (the node changes); a first scan now shows a broken mount early.
    match inventory() {
        Ok(inv) => tracing::info!(gpus = inv.gpus.len(), regions = inv.regions.len(), "node inventory"),
        Err(e) => tracing::warn!(error = %e, "host discovery fails; VMIs with policy required will be refused"),
    }
    let settings = SidecarSettings {
        name: args.name.clone(),
        priority: args.priority,
        options: args.defaults.apply(config.rewrite_options()),
        inventory,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(PREFIX, &format!("cannot start the async runtime: {e}"), 1),
    };
    runtime.block_on(async {
        let sidecar = match Sidecar::bind(&args.socket_dir, settings).await {
            Ok(s) => s,
            Err(e) => return fail(PREFIX, &e.to_string(), e.exit_code()),
        };
        match sidecar.serve(termination_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(PREFIX, &e.to_string(), e.exit_code()),
        }
    })
}

/// `onDefineDomain --vmi JSON --domain XML`: the new XML on stdout.
pub fn run_shim_define(args: &ShimDefineArgs) -> ExitCode {
    const PREFIX: &str = "hbm-hook onDefineDomain";
    let (config, inventory) = match settings_from(&args.inventory) {
        Ok(s) => s,
        Err(e) => return fail(PREFIX, &e.to_string(), 2),
    };
    let xml = match define_domain(
        args.domain.as_bytes(),
        args.vmi.as_bytes(),
        &args.defaults.apply(config.rewrite_options()),
        || inventory(),
    ) {
        Ok(DefineOutcome::Rewritten { xml, summary }) => {
            tracing::info!(summary = ?summary, "rewritten");
            xml
        }
        Ok(DefineOutcome::Unchanged { why }) => {
            tracing::info!(why = %why, "unchanged");
            args.domain.clone()
        }
        Ok(DefineOutcome::UnchangedWithWarning { warning }) => {
            tracing::warn!(warning = %warning, "unchanged (policy auto)");
            args.domain.clone()
        }
        Err(e) => return fail(PREFIX, &e.to_string(), e.exit_code()),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(xml.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(PREFIX, &format!("stdout: {e}"), 1),
    }
}

/// `preCloudInitIso --vmi JSON --cloud-init JSON`: the cloud-init JSON back, unchanged.
pub fn run_shim_cloud_init(args: &ShimCloudInitArgs) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(args.cloud_init.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail("hbm-hook preCloudInitIso", &format!("stdout: {e}"), 1),
    }
}

/// When the binary runs as `onDefineDomain` or `preCloudInitIso` (argv[0] basename, how KubeVirt's
/// sidecar shim calls hooks), the argument list for the matching subcommand.
pub fn shim_argv(argv: &[std::ffi::OsString]) -> Option<Vec<std::ffi::OsString>> {
    let argv0 = argv.first()?;
    let name = std::path::Path::new(argv0).file_name()?.to_str()?;
    if name != SHIM_ON_DEFINE_DOMAIN && name != SHIM_PRE_CLOUD_INIT_ISO {
        return None;
    }
    let mut out = vec![std::ffi::OsString::from("hbm-hook"), std::ffi::OsString::from(name)];
    out.extend(argv.iter().skip(1).cloned());
    Some(out)
}
