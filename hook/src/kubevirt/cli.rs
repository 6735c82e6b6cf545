//! The KubeVirt front end's shells:
//!
//! - `hbm-hook kubevirt-sidecar [--socket-dir DIR] [--name NAME] [--priority N]
//!   [--sysfs-root DIR | --topology FILE] [--config FILE]`: the gRPC hook sidecar
//!   ([`super::sidecar`]). Exit codes: 0 stopped by Shutdown/SIGTERM, 1 runtime error, 2 bad
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

use hbm_shell::ExitStatus;

use super::policy::{DefineOutcome, KubevirtError, define_domain};
use super::sidecar::{
    DEFAULT_NAME, DEFAULT_SOCKET_DIR, InventoryFn, Sidecar, SidecarError, SidecarSettings, termination_signal,
};
use crate::config::{ConfigError, GenericInitiatorStyle, HookConfig};
use crate::inventory::{self, InventoryArgs, InventoryError, InventorySource};
use hbm_rewrite::{Dialect, PolicyMode, RewriteOptions};

/// `argv[0]` basename KubeVirt's sidecar shim runs for OnDefineDomain.
pub const SHIM_ON_DEFINE_DOMAIN: &str = "onDefineDomain";
/// `argv[0]` basename KubeVirt's sidecar shim runs for PreCloudInitIso.
pub const SHIM_PRE_CLOUD_INIT_ISO: &str = "preCloudInitIso";

/// The node's defaults for VMIs that do not choose (their `hbm-passthrough.dev/` annotations
/// win); unset, the config file's `rewrite` section decides.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct VmiDefaultsArgs {
    /// Default SPM marking: auto, kernel-cmdline, memmap-type[=spm|reserved|normal], sp-mem or
    /// none (virt-launcher has no argv adapter, so auto means kernel-cmdline for a direct kernel
    /// boot and no marking otherwise).
    #[arg(long, value_name = "D", value_parser = |s: &str| s.parse::<Dialect>())]
    pub dialect: Option<Dialect>,
    /// Default policy: off, auto or required.
    #[arg(long, value_name = "P", value_parser = |s: &str| s.parse::<PolicyMode>())]
    pub policy: Option<PolicyMode>,
    /// How the Generic Initiator reaches QEMU: qemu-commandline (any KubeVirt) or acpi-nodeset
    /// (libvirt's hostdev `<acpi nodeset>`, KubeVirt >= 1.9) [default: config
    /// rewrite.native_generic_initiator, else qemu-commandline].
    #[arg(long, value_name = "STYLE", value_parser = |s: &str| s.parse::<GenericInitiatorStyle>())]
    pub generic_initiator: Option<GenericInitiatorStyle>,
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
        if let Some(style) = self.generic_initiator {
            base.native_generic_initiator = style == GenericInitiatorStyle::AcpiNodeset;
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

/// Why a KubeVirt command failed; its exit code is the documented one.
#[derive(Debug, thiserror::Error)]
pub enum KubevirtCommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error(transparent)]
    Define(#[from] KubevirtError),
    #[error("stdout: {0}")]
    Stdout(std::io::Error),
}

impl ExitStatus for KubevirtCommandError {
    /// 2 bad arguments, config or topology; the sidecar's and the definition's own codes; 1 I/O.
    fn exit_code(&self) -> u8 {
        match self {
            KubevirtCommandError::Config(_) | KubevirtCommandError::Inventory(_) => hbm_shell::exit::BAD_INPUT,
            KubevirtCommandError::Sidecar(e) => e.exit_code(),
            KubevirtCommandError::Define(e) => e.exit_code(),
            KubevirtCommandError::Runtime(_) | KubevirtCommandError::Stdout(_) => hbm_shell::exit::FAILURE,
        }
    }
}

/// The host defaults and the inventory function the arguments and config describe: a
/// `--topology` document is read once now, a sysfs root is scanned per call (the node changes).
pub fn settings_from(args: &InventoryArgs) -> Result<(HookConfig, InventoryFn), KubevirtCommandError> {
    let config = args.load_config()?;
    let inventory: InventoryFn = match args.source(&config) {
        InventorySource::Topology(path) => {
            let fixed = Arc::new(inventory::load_topology(&path)?);
            Arc::new(move || Ok(fixed.as_ref().clone()))
        }
        sysfs @ InventorySource::Sysfs(_) => {
            let discovery = config.discovery.clone();
            Arc::new(move || sysfs.read(&discovery).map_err(|e| e.to_string()))
        }
    };
    Ok((config, inventory))
}

/// `hbm-hook kubevirt-sidecar`: serves until Shutdown or SIGTERM.
pub fn run_sidecar(args: &SidecarArgs) -> ExitCode {
    match serve_sidecar(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => hbm_shell::exit_with("hbm-hook kubevirt-sidecar", &e),
    }
}

fn serve_sidecar(args: &SidecarArgs) -> Result<(), KubevirtCommandError> {
    let (config, inventory) = settings_from(&args.inventory)?;
    // Discovery runs per call (the node changes); a first scan now shows a broken mount early.
    match inventory() {
        Ok(inv) => tracing::info!(gpus = inv.gpus.len(), regions = inv.regions.len(), "node inventory"),
        Err(e) => tracing::warn!(error = %e, "host discovery fails; VMIs with policy required will be refused"),
    }
    let settings = SidecarSettings {
        name: args.name.clone(),
        priority: args.priority,
        options: args.defaults.apply(config.kubevirt_rewrite_options()),
        inventory,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(KubevirtCommandError::Runtime)?;
    runtime.block_on(async {
        let sidecar = Sidecar::bind(&args.socket_dir, settings).await?;
        sidecar.serve(termination_signal()).await?;
        Ok::<(), KubevirtCommandError>(())
    })
}

/// `onDefineDomain --vmi JSON --domain XML`: the new XML on stdout.
pub fn run_shim_define(args: &ShimDefineArgs) -> ExitCode {
    match shim_define(args).and_then(|xml| print(&xml)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => hbm_shell::exit_with("hbm-hook onDefineDomain", &e),
    }
}

/// The definition to print: the rewritten XML, or the input when there is nothing to do.
fn shim_define(args: &ShimDefineArgs) -> Result<String, KubevirtCommandError> {
    let (config, inventory) = settings_from(&args.inventory)?;
    let options = args.defaults.apply(config.kubevirt_rewrite_options());
    let xml = match define_domain(args.domain.as_bytes(), args.vmi.as_bytes(), &options, || inventory())? {
        DefineOutcome::Rewritten { xml, summary } => {
            tracing::info!(summary = ?summary, "rewritten");
            for warning in hbm_rewrite::warnings(&summary) {
                tracing::warn!("{warning}");
            }
            xml
        }
        DefineOutcome::Unchanged { why } => {
            tracing::info!(why = %why, "unchanged");
            args.domain.clone()
        }
        DefineOutcome::UnchangedWithWarning { warning } => {
            tracing::warn!(warning = %warning, "unchanged (policy auto)");
            args.domain.clone()
        }
    };
    Ok(xml)
}

fn print(text: &str) -> Result<(), KubevirtCommandError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(KubevirtCommandError::Stdout)
}

/// `preCloudInitIso --vmi JSON --cloud-init JSON`: the cloud-init JSON back, unchanged.
pub fn run_shim_cloud_init(args: &ShimCloudInitArgs) -> ExitCode {
    match print(&args.cloud_init) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => hbm_shell::exit_with("hbm-hook preCloudInitIso", &e),
    }
}

/// When the binary runs as `onDefineDomain` or `preCloudInitIso` (`argv[0]` basename, how KubeVirt's
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
