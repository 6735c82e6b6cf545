//! The one way every command (rewrite, KubeVirt sidecar and shim, libvirt hook, doctor) gets the
//! host's HBM inventory: a `discover --json` document (`--topology FILE`), else a scan of the
//! sysfs/procfs root (`--sysfs-root DIR`, else the config's `sysfs_root`, else `/`) with the
//! config's `discovery` section.

use std::path::{Path, PathBuf};

use topology::{DiscoveryConfig, Inventory};

use crate::config::{ConfigError, HookConfig};

/// The root scanned when neither `--sysfs-root` nor the config's `sysfs_root` names one.
pub const DEFAULT_SYSFS_ROOT: &str = "/";

/// Where the host inventory comes from: the flags shared by the commands that read it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InventoryArgs {
    /// Scan this sysfs/procfs root for the host's HBM (the node's /sys seen read-only); default:
    /// the config's `sysfs_root`, else `/`.
    #[arg(long, value_name = "DIR", conflicts_with = "topology")]
    pub sysfs_root: Option<PathBuf>,
    /// Use this `discover --json` document instead of scanning (describe a host other than this
    /// one).
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Config file (default /etc/hbm-passthrough/hook.yaml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Where the inventory is read from, once flags and config are combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventorySource {
    /// A `discover --json` document.
    Topology(PathBuf),
    /// A scan of this sysfs/procfs root.
    Sysfs(PathBuf),
}

/// Why the inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("topology {path}: not a discover --json document: {reason}; regenerate it with `hbm-hook discover --json`")]
    Topology { path: PathBuf, reason: String },
    #[error("topology {path}: cannot read: {source}")]
    TopologyRead { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Discover(#[from] topology::DiscoverError),
}

impl InventoryArgs {
    /// The config file these flags name (or the default one, or the built-in defaults).
    pub fn load_config(&self) -> Result<HookConfig, ConfigError> {
        HookConfig::load(self.config.as_deref())
    }

    /// Where the inventory comes from: `--topology`, else the sysfs root [`sysfs_root`] picks.
    pub fn source(&self, config: &HookConfig) -> InventorySource {
        match &self.topology {
            Some(path) => InventorySource::Topology(path.clone()),
            None => InventorySource::Sysfs(sysfs_root(self.sysfs_root.as_deref(), config)),
        }
    }
}

/// The sysfs/procfs root to scan: the flag, else the config's `sysfs_root`, else `/`.
pub fn sysfs_root(flag: Option<&Path>, config: &HookConfig) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| config.sysfs_root.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSFS_ROOT))
}

impl InventorySource {
    /// Reads the inventory (the document, or a scan with `discovery`'s explicit mappings).
    pub fn read(&self, discovery: &DiscoveryConfig) -> Result<Inventory, InventoryError> {
        match self {
            InventorySource::Topology(path) => load_topology(path),
            InventorySource::Sysfs(root) => Ok(topology::discover(root, discovery)?),
        }
    }
}

/// The inventory `args` and `config` describe.
pub fn resolve(args: &InventoryArgs, config: &HookConfig) -> Result<Inventory, InventoryError> {
    args.source(config).read(&config.discovery)
}

/// The largest `discover --json` document read (a host with thousands of GPUs stays far below).
const MAX_TOPOLOGY_BYTES: u64 = 64 << 20;

/// Reads a `discover --json` document.
pub fn load_topology(path: &Path) -> Result<Inventory, InventoryError> {
    let read_error = |source| InventoryError::TopologyRead {
        path: path.to_path_buf(),
        source,
    };
    let bytes = topology::sysfs::read_config_file(path, MAX_TOPOLOGY_BYTES).map_err(read_error)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))?;
    Inventory::from_json(&text).map_err(|e| InventoryError::Topology {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config_with_root(root: Option<&str>) -> HookConfig {
        HookConfig {
            sysfs_root: root.map(PathBuf::from),
            ..HookConfig::default()
        }
    }

    #[test]
    fn flag_then_config_then_slash() {
        let flagged = InventoryArgs {
            sysfs_root: Some("/flag".into()),
            ..InventoryArgs::default()
        };
        let configured = config_with_root(Some("/configured"));
        assert_eq!(flagged.source(&configured), InventorySource::Sysfs("/flag".into()));
        assert_eq!(
            InventoryArgs::default().source(&configured),
            InventorySource::Sysfs("/configured".into())
        );
        assert_eq!(
            InventoryArgs::default().source(&config_with_root(None)),
            InventorySource::Sysfs("/".into())
        );
        let document = InventoryArgs {
            topology: Some("/inv.json".into()),
            ..InventoryArgs::default()
        };
        assert_eq!(
            document.source(&configured),
            InventorySource::Topology("/inv.json".into())
        );
    }

    #[test]
    fn topology_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let garbled = dir.path().join("inv.json");
        std::fs::write(&garbled, "{not json").unwrap();
        let err = load_topology(&garbled).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "topology {}: not a discover --json document",
                garbled.display()
            )),
            "{err}"
        );
        let missing = dir.path().join("missing.json");
        let err = load_topology(&missing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("topology {}: cannot read", missing.display())),
            "{err}"
        );
    }
}
