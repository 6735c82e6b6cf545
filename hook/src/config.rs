//! `hbm-hook`'s config file (`--config FILE`, default `/etc/hbm-passthrough/hook.yaml` when it
//! exists): YAML, unknown keys rejected.
//!
//! ```yaml
//! discovery:            # topology::DiscoveryConfig (explicit GPU -> HBM mappings)
//!   gpus: []
//! rewrite:
//!   policy: auto        # off | auto | required
//!   dialect: auto       # auto | kernel-cmdline | memmap-type[=spm|reserved|normal] | sp-mem | none
//!   size_cap: 64GiB     # bytes or with a unit; absent = whole region
//!   adapter_path: /usr/local/bin/hbm-qemu
//!   native_generic_initiator: false
//! qemu:
//!   emulator: /usr/bin/qemu-system-x86_64
//!   probe_cache_dir: /var/cache/hbm-passthrough
//!   spm: probe          # what dialect auto may use through the adapter: probe | none | sp-mem | memmap-type | sp-mem,memmap-type
//! claims:
//!   dir: /run/hbm-passthrough/claims
//!   startup_grace_secs: 30
//! sysfs_root: /         # what every command scans unless --sysfs-root or --topology says otherwise
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use hbm_rewrite::size::parse_size;
use hbm_rewrite::{Dialect, PolicyMode, RewriteOptions, SpmSupport};

/// Where the config is read from when `--config` is not given (only if the file exists).
pub const DEFAULT_PATH: &str = "/etc/hbm-passthrough/hook.yaml";

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {reason}; fix the file (see docs/rewrite.md)")]
    Parse { path: PathBuf, reason: String },
    /// The `discovery` section fails topology's own checks: the same message `discover` (and
    /// the device plugin) print for the same file.
    #[error(transparent)]
    Discovery(#[from] topology::config::ConfigError),
}

/// The whole config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HookConfig {
    pub discovery: DiscoverySection,
    pub rewrite: RewriteSection,
    pub qemu: QemuSection,
    pub claims: ClaimsSection,
    /// sysfs/procfs root every command scans when no flag names one (default `/`; a fixture
    /// tree in tests).
    pub sysfs_root: Option<PathBuf>,
}

/// Discovery settings (explicit mappings), as `topology` defines them.
pub type DiscoverySection = topology::DiscoveryConfig;

/// Defaults for the rewriter (a domain's metadata overrides them).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewriteSection {
    #[serde(deserialize_with = "de_policy")]
    pub policy: PolicyMode,
    #[serde(deserialize_with = "de_dialect")]
    pub dialect: Dialect,
    #[serde(deserialize_with = "de_size")]
    pub size_cap: Option<u64>,
    pub adapter_path: String,
    pub native_generic_initiator: bool,
}

impl Default for RewriteSection {
    fn default() -> Self {
        let o = RewriteOptions::default();
        Self {
            policy: o.policy,
            dialect: o.dialect,
            size_cap: o.size_cap_bytes,
            adapter_path: o
                .adapter_path
                .unwrap_or_else(|| hbm_rewrite::DEFAULT_ADAPTER_PATH.to_string()),
            native_generic_initiator: o.native_generic_initiator,
        }
    }
}

/// QEMU settings (used by the argv adapter and the capability probe).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuSection {
    pub emulator: PathBuf,
    pub probe_cache_dir: PathBuf,
    /// The SPM dialects dialect `auto` may use through the adapter on a libvirt host.
    #[serde(deserialize_with = "de_qemu_spm")]
    pub spm: QemuSpm,
}

impl Default for QemuSection {
    fn default() -> Self {
        Self {
            emulator: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            probe_cache_dir: PathBuf::from("/var/cache/hbm-passthrough"),
            spm: QemuSpm::Probe,
        }
    }
}

/// How the SPM dialects of the domain's QEMU are known (`qemu.spm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QemuSpm {
    /// Ask `qemu.emulator` (the capability probe, cached per binary).
    #[default]
    Probe,
    /// As configured.
    Known(SpmSupport),
}

impl std::str::FromStr for QemuSpm {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut support = SpmSupport::default();
        match text.trim() {
            "probe" => return Ok(QemuSpm::Probe),
            "none" => return Ok(QemuSpm::Known(support)),
            list => {
                for dialect in list.split(',').map(str::trim) {
                    match dialect {
                        "sp-mem" => support.sp_mem = true,
                        "memmap-type" => support.memmap_type = true,
                        other => {
                            return Err(format!(
                                "qemu.spm: unknown value {other:?} (expected probe, none, sp-mem, memmap-type or sp-mem,memmap-type)"
                            ));
                        }
                    }
                }
            }
        }
        Ok(QemuSpm::Known(support))
    }
}

/// How the Generic Initiator reaches QEMU (`--generic-initiator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GenericInitiatorStyle {
    /// `-object acpi-generic-initiator` in `<qemu:commandline>` (any libvirt; KubeVirt carries
    /// it over).
    #[default]
    QemuCommandline,
    /// libvirt's hostdev `<acpi nodeset='K'/>` (libvirt >= 11.8, KubeVirt >= 1.9).
    AcpiNodeset,
}

impl std::str::FromStr for GenericInitiatorStyle {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "qemu-commandline" => Ok(GenericInitiatorStyle::QemuCommandline),
            "acpi-nodeset" => Ok(GenericInitiatorStyle::AcpiNodeset),
            other => Err(format!(
                "unknown Generic Initiator style {other:?} (expected qemu-commandline or acpi-nodeset)"
            )),
        }
    }
}

/// Region claims (libvirt hook).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsSection {
    pub dir: PathBuf,
    /// Seconds a claim whose holder has no QEMU yet still counts as live (the holder is between
    /// libvirt's `prepare` hook and the QEMU launch).
    pub startup_grace_secs: u64,
}

impl Default for ClaimsSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/run/hbm-passthrough/claims"),
            startup_grace_secs: crate::libvirt::claims::DEFAULT_STARTUP_GRACE.as_secs(),
        }
    }
}

fn de_policy<'de, D: Deserializer<'de>>(d: D) -> Result<PolicyMode, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

fn de_qemu_spm<'de, D: Deserializer<'de>>(d: D) -> Result<QemuSpm, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

fn de_dialect<'de, D: Deserializer<'de>>(d: D) -> Result<Dialect, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Bytes(b)) => Ok(Some(b)),
        Some(Size::Text(t)) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

impl HookConfig {
    /// Reads `path`, or [`DEFAULT_PATH`] when `path` is `None` and that file exists, else the
    /// built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<HookConfig, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let p = PathBuf::from(DEFAULT_PATH);
                if !p.exists() {
                    return Ok(HookConfig::default());
                }
                p
            }
        };
        let read_error = |source| ConfigError::Read {
            path: path.clone(),
            source,
        };
        let bytes = topology::sysfs::read_config_file(&path, topology::config::MAX_CONFIG_BYTES).map_err(read_error)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")))?;
        let config = Self::parse(&text).map_err(|reason| ConfigError::Parse {
            path: path.clone(),
            reason,
        })?;
        config.discovery.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Parses the YAML text (an empty document is the defaults).
    pub fn parse(text: &str) -> Result<HookConfig, String> {
        if text.trim().is_empty() {
            return Ok(HookConfig::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// The rewriter defaults this config gives on a libvirt host (the adapter runs QEMU);
    /// `qemu_spm` is what `qemu.spm` says or the probe found.
    pub fn rewrite_options(&self, qemu_spm: SpmSupport) -> RewriteOptions {
        RewriteOptions {
            policy: self.rewrite.policy,
            dialect: self.rewrite.dialect,
            size_cap_bytes: self.rewrite.size_cap,
            adapter_path: Some(self.rewrite.adapter_path.clone()),
            qemu_spm,
            native_generic_initiator: self.rewrite.native_generic_initiator,
        }
    }

    /// The rewriter defaults for a domain that KubeVirt's virt-launcher runs: no argv adapter
    /// there (its QEMU is its own), so no `<emulator>` change, no adapter dialects.
    pub fn kubevirt_rewrite_options(&self) -> RewriteOptions {
        RewriteOptions {
            adapter_path: None,
            ..self.rewrite_options(SpmSupport::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbm_rewrite::instructions::MemmapType;

    #[test]
    fn parses_every_section() {
        let c = HookConfig::parse(
            "rewrite:\n  policy: required\n  dialect: memmap-type=reserved\n  size_cap: 16GiB\n  adapter_path: /opt/hbm-qemu\n  native_generic_initiator: true\nqemu:\n  emulator: /opt/qemu\n  probe_cache_dir: /tmp/c\nclaims:\n  dir: /tmp/claims\n",
        )
        .unwrap_or_default();
        assert_eq!(c.rewrite.policy, PolicyMode::Required);
        assert_eq!(c.rewrite.dialect, Dialect::MemmapType(MemmapType::Reserved));
        assert_eq!(c.rewrite.size_cap, Some(16 << 30));
        assert_eq!(c.qemu.emulator, PathBuf::from("/opt/qemu"));
        assert_eq!(c.claims.dir, PathBuf::from("/tmp/claims"));
        let o = c.rewrite_options(SpmSupport::default());
        assert!(o.native_generic_initiator);
        assert_eq!(o.adapter_path.as_deref(), Some("/opt/hbm-qemu"));
        assert_eq!(c.kubevirt_rewrite_options().adapter_path, None);
        assert_eq!(c.qemu.spm, QemuSpm::Probe);
        assert_eq!(
            HookConfig::parse("rewrite:\n  size_cap: 1048576\n").map(|c| c.rewrite.size_cap),
            Ok(Some(1 << 20))
        );
    }

    #[test]
    fn qemu_spm_is_probe_none_or_a_list() {
        let spm = |text: &str| HookConfig::parse(&format!("qemu:\n  spm: {text}\n")).map(|c| c.qemu.spm);
        assert_eq!(spm("probe"), Ok(QemuSpm::Probe));
        assert_eq!(spm("none"), Ok(QemuSpm::Known(SpmSupport::default())));
        assert_eq!(
            spm("sp-mem, memmap-type"),
            Ok(QemuSpm::Known(SpmSupport {
                sp_mem: true,
                memmap_type: true
            }))
        );
        assert!(spm("frob").is_err_and(|e| e.contains("qemu.spm: unknown value \"frob\"")));
    }

    #[test]
    fn the_default_dialect_is_auto_and_gi_styles_parse() {
        assert_eq!(HookConfig::default().rewrite.dialect, Dialect::Auto);
        assert_eq!("acpi-nodeset".parse(), Ok(GenericInitiatorStyle::AcpiNodeset));
        assert_eq!("qemu-commandline".parse(), Ok(GenericInitiatorStyle::QemuCommandline));
        assert!("native".parse::<GenericInitiatorStyle>().is_err());
    }

    #[test]
    fn defaults_and_rejections() {
        assert_eq!(HookConfig::parse(""), Ok(HookConfig::default()));
        assert_eq!(
            HookConfig::default().qemu.emulator,
            PathBuf::from("/usr/bin/qemu-system-x86_64")
        );
        assert!(HookConfig::parse("rewrite:\n  frobnicate: 1\n").is_err_and(|e| e.contains("frobnicate")));
        assert!(HookConfig::parse("rewrite:\n  dialect: spm\n").is_err_and(|e| e.contains("unknown dialect")));
        assert!(HookConfig::parse("rewrite:\n  policy: sometimes\n").is_err_and(|e| e.contains("unknown policy")));
        assert!(HookConfig::parse("rewrite:\n  size_cap: lots\n").is_err());
        assert!(HookConfig::parse("nonsense: true\n").is_err());
    }
}
