//! `hbm-hook rewrite`: the CLI shell around [`hbm_rewrite::rewrite`].
//!
//! Reads the domain XML (`--in FILE` or stdin), the host inventory (`--topology FILE` with a
//! `discover --json` document, or a scan of `--sysfs-root DIR`, default the config's
//! `sysfs_root`, else `/`), the config file, writes the result (`--out FILE` atomically, or
//! stdout) and a short summary on stderr.
//! Exit codes: 0 ok (also "nothing to do"), 1 I/O or internal error, 2 bad input, 3 cannot satisfy.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hbm_shell::{Durability, ExitStatus};

use crate::config::ConfigError;
use crate::inventory::{self, InventoryArgs, InventoryError};
use hbm_rewrite::size::parse_size;
use hbm_rewrite::{Dialect, PolicyMode, RewriteError, RewriteOptions, Rewritten, rewrite};

/// The prefix of every line this command writes on stderr.
const PREFIX: &str = "hbm-hook rewrite";

/// Arguments of `hbm-hook rewrite`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RewriteArgs {
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// SPM marking: auto (default: per region, see docs/rewrite.md), kernel-cmdline,
    /// memmap-type[=spm|reserved|normal], sp-mem or none.
    #[arg(long, value_name = "D", value_parser = |s: &str| s.parse::<Dialect>())]
    pub dialect: Option<Dialect>,
    /// Which hostdevs get HBM: off, auto or required.
    #[arg(long, value_name = "MODE", value_parser = |s: &str| s.parse::<PolicyMode>())]
    pub policy: Option<PolicyMode>,
    /// Largest guest cell per region: bytes or with a unit (64GiB).
    #[arg(long, value_name = "BYTES", value_parser = |s: &str| parse_size(s))]
    pub size_cap: Option<u64>,
    /// Domain XML to read (default stdin).
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Where to write the result (default stdout); written atomically, untouched on error.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Why `hbm-hook rewrite` failed.
#[derive(Debug, thiserror::Error)]
pub enum RewriteCommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("discovery: {0}")]
    Discover(topology::DiscoverError),
    #[error(transparent)]
    Inventory(InventoryError),
    #[error("input {what}: cannot read: {source}")]
    Input { what: String, source: std::io::Error },
    #[error("input {what}: not UTF-8 text; a libvirt domain definition is UTF-8 XML")]
    NotUtf8 { what: String },
    #[error("{0}")]
    Rewrite(#[from] RewriteError),
    #[error("output {path}: cannot write: {source}")]
    Output { path: PathBuf, source: std::io::Error },
    #[error("output {path}: refused: {source}")]
    OutputNotRegular { path: PathBuf, source: std::io::Error },
}

impl From<InventoryError> for RewriteCommandError {
    fn from(err: InventoryError) -> Self {
        match err {
            InventoryError::Discover(source) => RewriteCommandError::Discover(source),
            other => RewriteCommandError::Inventory(other),
        }
    }
}

impl ExitStatus for RewriteCommandError {
    /// 1 I/O or internal, 2 bad input, 3 cannot satisfy.
    fn exit_code(&self) -> u8 {
        match self {
            RewriteCommandError::Config(_)
            | RewriteCommandError::Inventory(_)
            | RewriteCommandError::NotUtf8 { .. }
            | RewriteCommandError::OutputNotRegular { .. } => hbm_shell::exit::BAD_INPUT,
            RewriteCommandError::Rewrite(e) => e.exit_code(),
            RewriteCommandError::Discover(_)
            | RewriteCommandError::Input { .. }
            | RewriteCommandError::Output { .. } => hbm_shell::exit::FAILURE,
        }
    }
}

fn read_input(input: Option<&Path>) -> Result<String, RewriteCommandError> {
    let what = input.map_or_else(|| "stdin".to_string(), |path| path.display().to_string());
    let read = match input {
        Some(path) => std::fs::read(path),
        None => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).map(|_| bytes)
        }
    };
    let bytes = read.map_err(|source| RewriteCommandError::Input {
        what: what.clone(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| RewriteCommandError::NotUtf8 { what })
}

/// The rewriter options: the config's defaults with the flags applied.
fn options(args: &RewriteArgs, defaults: RewriteOptions) -> RewriteOptions {
    let mut options = defaults;
    if let Some(dialect) = args.dialect {
        options.dialect = dialect;
    }
    if let Some(policy) = args.policy {
        options.policy = policy;
    }
    if let Some(cap) = args.size_cap {
        options.size_cap_bytes = Some(cap);
    }
    options
}

/// Writes the result: `--out` atomically (visible, not fsynced: it can be recomputed; through a
/// symlink to its target; a device node, FIFO or directory is refused as bad input and left
/// alone), else stdout.
fn write_output(out: Option<&Path>, xml: &str) -> Result<(), RewriteCommandError> {
    match out {
        Some(path) => hbm_shell::write_atomically(path, xml.as_bytes(), Durability::Visible).map_err(|source| {
            let path = path.to_path_buf();
            if source.kind() == std::io::ErrorKind::InvalidInput {
                RewriteCommandError::OutputNotRegular { path, source }
            } else {
                RewriteCommandError::Output { path, source }
            }
        }),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(xml.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| RewriteCommandError::Output {
                    path: PathBuf::from("-"),
                    source,
                })
        }
    }
}

/// Runs the command (everything but printing the summary or the error).
pub fn run(args: &RewriteArgs) -> Result<Rewritten, RewriteCommandError> {
    let config = args.inventory.load_config()?;
    let options = options(
        args,
        config.rewrite_options(crate::qemu::probe::spm_support(&config.qemu)),
    );
    let inventory = inventory::resolve(&args.inventory, &config)?;
    let xml = read_input(args.input.as_deref())?;
    let result = rewrite(&xml, &inventory, &options)?;
    tracing::debug!(changed = result.changed, changes = result.summary.len(), "rewrite done");
    write_output(args.out.as_deref(), &result.xml)?;
    Ok(result)
}

/// `hbm-hook rewrite`: the summary or the error on stderr, the documented exit code.
pub fn main(args: &RewriteArgs) -> ExitCode {
    match run(args) {
        Ok(result) => {
            let mut stderr = std::io::stderr().lock();
            for line in &result.summary {
                let _ = writeln!(stderr, "{PREFIX}: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => hbm_shell::exit_with(&format!("{PREFIX}: error"), &e),
    }
}
