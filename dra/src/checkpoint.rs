//! Prepared claims on disk: `<plugin dir>/checkpoint.json`, rewritten atomically and durably
//! after every change, so a restart of the driver (or the kubelet) neither loses nor
//! double-prepares a claim, and unprepare knows exactly which files prepare wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Layout version of the file.
pub const VERSION: u32 = 1;

/// One prepared device of a claim, as answered to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedDevice {
    pub request_names: Vec<String>,
    pub pool: String,
    pub device: String,
    pub cdi_device_ids: Vec<String>,
}

/// One prepared claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedClaim {
    pub namespace: String,
    pub name: String,
    pub devices: Vec<PreparedDevice>,
    /// Every file prepare wrote (CDI spec, metadata files): unprepare removes these.
    pub files: Vec<PathBuf>,
    /// Folders prepare created for the files, removed (when empty) after them, deepest first.
    pub dirs: Vec<PathBuf>,
    /// `metadata.generation` of the metadata files last written.
    pub metadata_generation: u64,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// Keyed by claim UID.
    pub claims: BTreeMap<String, PreparedClaim>,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            version: VERSION,
            claims: BTreeMap::new(),
        }
    }
}

/// Why the checkpoint cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "checkpoint {path} is damaged ({message}); move it away to start empty (prepared claims are then forgotten)"
    )]
    Parse { path: PathBuf, message: String },
    #[error("checkpoint {path} has layout version {found}, this driver reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write checkpoint {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Checkpoint {
    /// Reads `path`; a missing file is an empty checkpoint.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let checkpoint: Self = serde_json::from_str(&text).map_err(|error| CheckpointError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        if checkpoint.version != VERSION {
            return Err(CheckpointError::Version {
                path: path.to_path_buf(),
                found: checkpoint.version,
            });
        }
        Ok(checkpoint)
    }

    /// Writes `path` atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let write_error = |source| CheckpointError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| write_error(std::io::Error::other(e)))?;
        text.push('\n');
        hbm_shell::write_atomically(path, text.as_bytes(), hbm_shell::Durability::Durable).map_err(write_error)
    }

    /// The claim (other than `except_uid`) a device of `pool` is prepared for.
    pub fn holder(&self, pool: &str, device: &str, except_uid: &str) -> Option<&str> {
        self.claims
            .iter()
            .filter(|(uid, _)| uid.as_str() != except_uid)
            .find(|(_, claim)| claim.devices.iter().any(|d| d.pool == pool && d.device == device))
            .map(|(uid, _)| uid.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn claim(device: &str) -> PreparedClaim {
        PreparedClaim {
            namespace: "vms".into(),
            name: "c".into(),
            devices: vec![PreparedDevice {
                request_names: vec!["gpu".into()],
                pool: "node-a".into(),
                device: device.into(),
                cdi_device_ids: vec![format!("hbm.passthrough.dev/gpu=u-{device}")],
            }],
            files: vec!["/var/run/cdi/x.json".into()],
            dirs: vec![],
            metadata_generation: 1,
        }
    }

    #[test]
    fn saves_and_loads_the_same_claims_and_finds_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        assert_eq!(Checkpoint::load(&path).unwrap(), Checkpoint::default());
        let mut checkpoint = Checkpoint::default();
        checkpoint.claims.insert("u-1".into(), claim("gpu-a"));
        checkpoint.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap();
        assert_eq!(loaded, checkpoint);
        assert_eq!(loaded.holder("node-a", "gpu-a", "u-2"), Some("u-1"));
        assert_eq!(loaded.holder("node-a", "gpu-a", "u-1"), None);
        assert_eq!(loaded.holder("node-b", "gpu-a", "u-2"), None);
    }

    #[test]
    fn damaged_and_foreign_files_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        std::fs::write(&path, "{").unwrap();
        let error = Checkpoint::load(&path).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("checkpoint {} is damaged", path.display()))
        );
        std::fs::write(&path, r#"{"version":9,"claims":{}}"#).unwrap();
        let error = Checkpoint::load(&path).unwrap_err();
        assert!(matches!(error, CheckpointError::Version { found: 9, .. }));
    }
}
