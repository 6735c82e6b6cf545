//! Explicit mapping, the first source in precedence: GPU PCI address -> host node(s) and/or dax
//! device(s). Embedded by the binaries' YAML configs under the key `discovery`:
//!
//! ```yaml
//! discovery:
//!   gpus:
//!     - gpu: "0000:c1:00.0"
//!       nodes: [2]          # host NUMA nodes holding this GPU's HBM
//!       dax: ["dax0.0"]     # and/or device-dax devices
//! ```
//!
//! A GPU named here gets exactly the regions listed (other sources are not consulted for it).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::PciAddress;

/// Discovery settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Explicit GPU -> HBM mappings.
    #[serde(default)]
    pub gpus: Vec<GpuMapping>,
}

/// One explicit mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuMapping {
    /// PCI address of the GPU, e.g. `0000:c1:00.0`.
    pub gpu: PciAddress,
    /// Host NUMA nodes holding its HBM.
    #[serde(default)]
    pub nodes: Vec<u32>,
    /// Device-dax devices (`dax0.0`) holding its HBM.
    #[serde(default)]
    pub dax: Vec<String>,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: unreadable: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: invalid discovery configuration: {message}")]
    Invalid { path: String, message: String },
}

/// Largest config file read, in bytes (the shipped ones are a few hundred).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A config file as the binaries write it: `discovery:` plus other sections this crate ignores.
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    discovery: DiscoveryConfig,
}

impl DiscoveryConfig {
    /// Parses a YAML document holding a `discovery:` section (other top-level keys are ignored;
    /// an empty document is the default configuration).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let file: ConfigFile = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        file.discovery.validate(origin)?;
        Ok(file.discovery)
    }

    /// Loads [`DiscoveryConfig::from_yaml`] from a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let bytes = crate::sysfs::read_config_file(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: origin.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Read {
            path: origin.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Self::from_yaml(&text, &origin)
    }

    /// Checks what serde cannot: each GPU once, each mapping non-empty, dax names well-formed.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        for (i, m) in self.gpus.iter().enumerate() {
            if self.gpus[..i].iter().any(|o| o.gpu == m.gpu) {
                return Err(invalid(format!("discovery.gpus: {} is listed twice", m.gpu)));
            }
            if m.nodes.is_empty() && m.dax.is_empty() {
                return Err(invalid(format!(
                    "discovery.gpus: {} names neither nodes nor dax devices",
                    m.gpu
                )));
            }
            for d in &m.dax {
                if !is_dax_name(d) {
                    return Err(invalid(format!(
                        "discovery.gpus: {}: {d:?} is not a dax device name like dax0.0",
                        m.gpu
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn mapping(&self, gpu: PciAddress) -> Option<&GpuMapping> {
        self.gpus.iter().find(|m| m.gpu == gpu)
    }
}

/// `daxX.Y` with decimal X and Y.
pub fn is_dax_name(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("dax") else {
        return false;
    };
    let Some((a, b)) = rest.split_once('.') else {
        return false;
    };
    !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_embedded_section_and_ignores_other_keys() {
        let c = DiscoveryConfig::from_yaml(
            "resourceName: x\ndiscovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n      nodes: [2]\n      dax: [dax0.0]\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.gpus.len(), 1);
        assert_eq!(c.gpus[0].nodes, vec![2]);
        assert_eq!(c.gpus[0].dax, vec!["dax0.0".to_string()]);
        assert_eq!(DiscoveryConfig::from_yaml("", "t").unwrap(), DiscoveryConfig::default());
    }

    #[test]
    fn rejects_typos_duplicates_and_bad_names() {
        let bad = [
            "discovery:\n  gpu: []\n",
            "discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n      node: [2]\n",
            "discovery:\n  gpus:\n    - gpu: \"zz\"\n      nodes: [2]\n",
            "discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n",
            "discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n      dax: [\"/dev/dax0.0\"]\n",
            "discovery:\n  gpus:\n    - {gpu: \"0000:c1:00.0\", nodes: [1]}\n    - {gpu: \"0000:c1:00.0\", nodes: [2]}\n",
        ];
        for b in bad {
            let e = DiscoveryConfig::from_yaml(b, "cfg.yaml").unwrap_err();
            assert!(
                e.to_string().starts_with("cfg.yaml: invalid discovery configuration: "),
                "{e}"
            );
        }
    }
}
