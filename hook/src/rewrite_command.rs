//! `hbm-hook rewrite`: the CLI shell around [`hbm_rewrite::rewrite`].
//!
//! Reads the domain XML (`--in FILE` or stdin), the host inventory (`--topology FILE` with a
//! `discover --json` document, or a scan of `--sysfs-root DIR`, default `/`), the config file,
//! writes the result (`--out FILE` atomically, or stdout) and a short summary on stderr.
//! Exit codes: 0 ok (also "nothing to do"), 1 I/O or internal error, 2 bad input, 3 cannot satisfy.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use topology::Inventory;

use crate::config::{ConfigError, HookConfig};
use hbm_rewrite::size::parse_size;
use hbm_rewrite::{Dialect, PolicyMode, RewriteError, Rewritten, rewrite};

/// Arguments of `hbm-hook rewrite`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RewriteArgs {
    /// A `discover --json` document describing the host (rewrite for a host other than this one).
    #[arg(long, value_name = "FILE", conflicts_with = "sysfs_root")]
    pub topology: Option<PathBuf>,
    /// Scan this sysfs/procfs root for the host's HBM (default `/`).
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
    /// Config file (default /etc/hbm-passthrough/hook.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// SPM marking: kernel-cmdline, memmap-type[=spm|reserved|normal], sp-mem or none.
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
    #[error("topology {path}: not a discover --json document: {reason}; regenerate it with `hbm-hook discover --json`")]
    Topology { path: PathBuf, reason: String },
    #[error("topology {path}: cannot read: {source}")]
    TopologyRead { path: PathBuf, source: std::io::Error },
    #[error("discovery: {0}")]
    Discover(String),
    #[error("input {what}: cannot read: {source}")]
    Input { what: String, source: std::io::Error },
    #[error("input {what}: not UTF-8 text; a libvirt domain definition is UTF-8 XML")]
    NotUtf8 { what: String },
    #[error("{0}")]
    Rewrite(#[from] RewriteError),
    #[error("output {path}: cannot write: {source}")]
    Output { path: PathBuf, source: std::io::Error },
}

impl RewriteCommandError {
    /// Process exit code: 1 I/O or internal, 2 bad input, 3 cannot satisfy.
    pub fn exit_code(&self) -> u8 {
        match self {
            RewriteCommandError::Config(ConfigError::Parse { .. }) => 2,
            RewriteCommandError::Config(ConfigError::Read { .. }) => 2,
            RewriteCommandError::Topology { .. } | RewriteCommandError::NotUtf8 { .. } => 2,
            RewriteCommandError::TopologyRead { .. } => 2,
            RewriteCommandError::Rewrite(e) => e.exit_code(),
            RewriteCommandError::Discover(_)
            | RewriteCommandError::Input { .. }
            | RewriteCommandError::Output { .. } => 1,
        }
    }
}

/// Reads a `discover --json` document.
pub fn load_topology(path: &Path) -> Result<Inventory, RewriteCommandError> {
    let text = std::fs::read_to_string(path).map_err(|source| RewriteCommandError::TopologyRead {
        path: path.to_path_buf(),
        source,
    })?;
    Inventory::from_json(&text).map_err(|e| RewriteCommandError::Topology {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_input(input: Option<&Path>) -> Result<String, RewriteCommandError> {
    let (what, bytes) = match input {
        Some(p) => {
            let what = p.display().to_string();
            let b = std::fs::read(p).map_err(|source| RewriteCommandError::Input {
                what: what.clone(),
                source,
            })?;
            (what, b)
        }
        None => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .map_err(|source| RewriteCommandError::Input {
                    what: "stdin".into(),
                    source,
                })?;
            ("stdin".to_string(), b)
        }
    };
    String::from_utf8(bytes).map_err(|_| RewriteCommandError::NotUtf8 { what })
}

/// Writes `text` to `path` atomically: a temporary file in the same folder (keeping the old
/// file's permissions, else 0644), then a rename.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), RewriteCommandError> {
    let err = |source| RewriteCommandError::Output {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".hbm-rewrite-")
        .tempfile_in(dir)
        .map_err(err)?;
    // No fsync: readers see the old or the new file, never a half-written one; a durability
    // barrier would cost more than the whole rewrite (several ms).
    tmp.write_all(text.as_bytes()).map_err(err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Runs the command (everything but printing the error).
pub fn run(args: &RewriteArgs) -> Result<Rewritten, RewriteCommandError> {
    let config = HookConfig::load(args.config.as_deref())?;
    let mut options = config.rewrite_options();
    if let Some(d) = args.dialect {
        options.dialect = d;
    }
    if let Some(p) = args.policy {
        options.policy = p;
    }
    if let Some(c) = args.size_cap {
        options.size_cap_bytes = Some(c);
    }
    let inventory = match &args.topology {
        Some(path) => load_topology(path)?,
        None => {
            let root = args
                .sysfs_root
                .clone()
                .or_else(|| config.sysfs_root.clone())
                .unwrap_or_else(|| PathBuf::from("/"));
            topology::discover(&root, &config.discovery).map_err(|e| RewriteCommandError::Discover(e.to_string()))?
        }
    };
    let xml = read_input(args.input.as_deref())?;
    let result = rewrite(&xml, &inventory, &options)?;
    tracing::debug!(changed = result.changed, changes = result.summary.len(), "rewrite done");
    match &args.out {
        Some(path) => write_atomically(path, &result.xml)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(result.xml.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| RewriteCommandError::Output {
                    path: PathBuf::from("-"),
                    source,
                })?;
        }
    }
    Ok(result)
}

/// `hbm-hook rewrite`: returns the process exit code.
pub fn main(args: &RewriteArgs) -> u8 {
    match run(args) {
        Ok(result) => {
            let mut err = std::io::stderr().lock();
            for line in &result.summary {
                let _ = writeln!(err, "hbm-hook rewrite: {line}");
            }
            0
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "hbm-hook rewrite: error: {e}");
            e.exit_code()
        }
    }
}
