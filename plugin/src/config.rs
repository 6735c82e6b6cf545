//! Settings: command-line flags, environment variables and the YAML config file, merged with
//! flags (and their env vars) winning over the file, the file winning over built-in defaults.
//!
//! The `resources` rules (and the label domain) are re-read on hot reload; everything else is
//! read once at start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default label/annotation domain for the Node inventory.
pub const DEFAULT_LABEL_DOMAIN: &str = "hbm-passthrough.dev";
/// Default kubelet device plugin directory.
pub const DEFAULT_DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Default kubelet plugin-watcher directory.
pub const DEFAULT_PLUGINS_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
/// Default poll interval of the health/inventory refresh (inotify triggers refreshes sooner).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long the plugin waits for `kubelet.sock` before it warns (and keeps waiting).
pub const DEFAULT_KUBELET_WAIT_WARNING: Duration = Duration::from_secs(30);

/// How the plugin tells the kubelet about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationMode {
    /// `plugin-watcher` when the plugins registry directory exists, else `kubelet-socket`.
    Auto,
    /// Dial `<device-plugin-dir>/kubelet.sock` and call `Register`.
    KubeletSocket,
    /// Put the socket in `<plugins-registry-dir>` and answer the kubelet's `GetInfo`.
    PluginWatcher,
}

/// Which GPUs a rule matches: PCI vendor and optionally device ids (4 hex digits, `0x` prefix
/// and upper case accepted).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    pub vendor: String,
    /// One device id.
    #[serde(default)]
    pub device: Option<String>,
    /// Several device ids (joined with `device`).
    #[serde(default)]
    pub devices: Vec<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines with `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line (fields, span, level, timestamp).
    Json,
}

/// One resource rule as written in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleConfig {
    /// Extended resource name, `<domain>/<name>`, e.g. `amd.com/mi300x-hbm`.
    pub name: String,
    pub selector: Selector,
    /// Prefix put in front of the PCI address to form the device ID (default none).
    #[serde(default)]
    pub id_prefix: String,
}

/// A validated resource rule: ids normalized to 4 lowercase hex digits; empty `devices` matches
/// every device of the vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRule {
    pub name: String,
    pub vendor: String,
    pub devices: Vec<String>,
    pub id_prefix: String,
}

/// The YAML config file (camelCase keys). Every key is optional; unknown keys are an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    pub device_plugin_dir: Option<PathBuf>,
    pub plugins_registry_dir: Option<PathBuf>,
    pub registration: Option<RegistrationMode>,
    pub sysfs_root: Option<PathBuf>,
    pub dev_root: Option<PathBuf>,
    pub host_dev_root: Option<PathBuf>,
    pub node_name: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    /// Duration such as `500ms` or `2s`.
    pub health_poll_interval: Option<String>,
    pub label_domain: Option<String>,
    #[serde(default)]
    pub resources: Vec<RuleConfig>,
    /// Discovery overrides (explicit GPU -> node/dax mappings), handed to the topology scan.
    #[serde(default)]
    pub discovery: topology::DiscoveryConfig,
    /// The hook's setting; shares this file, unused by the plugin.
    #[serde(default)]
    pub default_dialect: Option<String>,
}

/// A parsed and validated config file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedConfig {
    pub file: FileConfig,
    pub rules: Vec<ResourceRule>,
}

/// Flags of `hbm-device-plugin run`; each also reads an environment variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunArgs {
    /// Kubelet device plugin directory (holds kubelet.sock) [default: /var/lib/kubelet/device-plugins]
    #[arg(long, env = "HBM_DEVICE_PLUGIN_DIR")]
    pub device_plugin_dir: Option<PathBuf>,
    /// Kubelet plugin-watcher directory [default: /var/lib/kubelet/plugins_registry]
    #[arg(long, env = "HBM_PLUGINS_REGISTRY_DIR")]
    pub plugins_registry_dir: Option<PathBuf>,
    /// Registration mode [default: auto]
    #[arg(long, value_enum, env = "HBM_REGISTRATION")]
    pub registration: Option<RegistrationMode>,
    /// Root holding sys/ and proc/ (a fixture tree in tests) [default: /]
    #[arg(long, env = "HBM_SYSFS_ROOT")]
    pub sysfs_root: Option<PathBuf>,
    /// Where vfio/<group>, iommu and dax devices live [default: /dev]
    #[arg(long, env = "HBM_DEV_ROOT")]
    pub dev_root: Option<PathBuf>,
    /// Where the same device nodes live on the host, as the kubelet sees them: the host_path
    /// of the device specs Allocate returns (set it when --dev-root is a mount of the host's /dev) [default: /dev]
    #[arg(long, env = "HBM_HOST_DEV_ROOT")]
    pub host_dev_root: Option<PathBuf>,
    /// YAML config file (resource rules and any of these settings); hot-reloaded
    #[arg(long, env = "HBM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Own Node name; enables the Node labels and discovery annotation
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Address of the /metrics, /healthz and /readyz HTTP server (off when unset)
    #[arg(long, env = "HBM_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Health/inventory poll interval, e.g. `500ms`, `2s` [default: 1s]
    #[arg(long, env = "HBM_HEALTH_POLL_INTERVAL")]
    pub health_poll_interval: Option<String>,
    /// Do not use inotify; rely on the health poll alone (for filesystems without inotify)
    #[arg(long, env = "HBM_NO_INOTIFY")]
    pub no_inotify: bool,
    /// Log line format on stderr (flag or env only; the filter comes from RUST_LOG)
    #[arg(long, value_enum, env = "HBM_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Domain of the Node labels and annotation [default: hbm-passthrough.dev]
    #[arg(long, env = "HBM_LABEL_DOMAIN")]
    pub label_domain: Option<String>,
    /// How long to wait for kubelet.sock before warning, e.g. `200ms` (tests) [default: 30s]
    #[arg(long, env = "HBM_KUBELET_WAIT_WARNING", hide = true)]
    pub kubelet_wait_warning: Option<String>,
}

/// Why a config file or setting is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (check --config / HBM_CONFIG)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message} (see docs/plugin.md, \"Config file\")")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: resource rule {index} ({name:?}): {why}")]
    Rule {
        path: PathBuf,
        index: usize,
        name: String,
        why: String,
    },
    #[error("invalid label domain {domain:?}: {why} (use a DNS subdomain such as hbm-passthrough.dev)")]
    LabelDomain { domain: String, why: String },
    #[error("health poll interval {0:?} is not a duration between 10ms and 60s (write e.g. 500ms or 2s)")]
    PollInterval(String),
    #[error("kubelet wait warning {0:?} is not a duration between 10ms and 60s (write e.g. 500ms or 30s)")]
    KubeletWaitWarning(String),
}

/// Fully resolved settings the manager runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub device_plugin_dir: PathBuf,
    pub plugins_registry_dir: PathBuf,
    pub registration: RegistrationMode,
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    pub host_dev_root: PathBuf,
    pub config_path: Option<PathBuf>,
    pub node_name: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub poll_interval: Duration,
    pub label_domain: String,
    pub rules: Vec<ResourceRule>,
    pub discovery: topology::DiscoveryConfig,
    /// Watch directories with inotify (`false` with `--no-inotify`: the poll does everything).
    pub inotify: bool,
    /// How long `kubelet.sock` may be absent before a warning names the directory.
    pub kubelet_wait_warning: Duration,
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = read_config_text(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// The text of the config file at `path`: a regular file (a FIFO or device is refused rather
/// than waited on) of at most [`topology::config::MAX_CONFIG_BYTES`], in UTF-8.
pub fn read_config_text(path: &Path) -> std::io::Result<String> {
    let bytes = topology::sysfs::read_config_file(path, topology::config::MAX_CONFIG_BYTES)?;
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Parses and validates config file text (`path` only names it in errors).
pub fn parse_file(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
    let file: FileConfig = if text.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
    };
    let rules = validate_rules(path, &file.resources)?;
    file.discovery
        .validate(&path.display().to_string())
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if let Some(domain) = &file.label_domain {
        validate_dns_subdomain(domain).map_err(|why| ConfigError::LabelDomain {
            domain: domain.clone(),
            why: why.to_string(),
        })?;
    }
    if let Some(interval) = &file.health_poll_interval {
        parse_interval(interval)?;
    }
    Ok(LoadedConfig { file, rules })
}

/// Parses `500ms`, `2s` (or a bare number of milliseconds), 10 ms to 60 s.
pub fn parse_interval(text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let parsed = if let Some(ms) = t.strip_suffix("ms") {
        ms.trim().parse::<u64>().ok().map(Duration::from_millis)
    } else if let Some(s) = t.strip_suffix('s') {
        s.trim().parse::<u64>().ok().map(Duration::from_secs)
    } else {
        t.parse::<u64>().ok().map(Duration::from_millis)
    };
    parsed
        .filter(|d| (Duration::from_millis(10)..=Duration::from_secs(60)).contains(d))
        .ok_or_else(|| ConfigError::PollInterval(text.to_string()))
}

/// Merges flags/env over the file over defaults.
pub fn resolve(args: &RunArgs, loaded: LoadedConfig) -> Result<Settings, ConfigError> {
    let LoadedConfig { file, rules } = loaded;
    let poll_interval = match args
        .health_poll_interval
        .as_ref()
        .or(file.health_poll_interval.as_ref())
    {
        Some(text) => parse_interval(text)?,
        None => DEFAULT_POLL_INTERVAL,
    };
    let label_domain = args
        .label_domain
        .clone()
        .or(file.label_domain)
        .unwrap_or_else(|| DEFAULT_LABEL_DOMAIN.to_string());
    validate_dns_subdomain(&label_domain).map_err(|why| ConfigError::LabelDomain {
        domain: label_domain.clone(),
        why: why.to_string(),
    })?;
    Ok(Settings {
        device_plugin_dir: args
            .device_plugin_dir
            .clone()
            .or(file.device_plugin_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DEVICE_PLUGIN_DIR)),
        plugins_registry_dir: args
            .plugins_registry_dir
            .clone()
            .or(file.plugins_registry_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGINS_REGISTRY_DIR)),
        registration: args
            .registration
            .or(file.registration)
            .unwrap_or(RegistrationMode::Auto),
        sysfs_root: args
            .sysfs_root
            .clone()
            .or(file.sysfs_root)
            .unwrap_or_else(|| PathBuf::from("/")),
        dev_root: args
            .dev_root
            .clone()
            .or(file.dev_root)
            .unwrap_or_else(|| PathBuf::from("/dev")),
        host_dev_root: args
            .host_dev_root
            .clone()
            .or(file.host_dev_root)
            .unwrap_or_else(|| PathBuf::from("/dev")),
        config_path: args.config.clone(),
        node_name: args.node_name.clone().or(file.node_name),
        metrics_addr: args.metrics_addr.or(file.metrics_addr),
        poll_interval,
        label_domain,
        rules,
        discovery: file.discovery,
        inotify: !args.no_inotify,
        kubelet_wait_warning: match &args.kubelet_wait_warning {
            Some(text) => parse_interval(text).map_err(|_| ConfigError::KubeletWaitWarning(text.clone()))?,
            None => DEFAULT_KUBELET_WAIT_WARNING,
        },
    })
}

fn normalize_pci_id(s: &str) -> Option<String> {
    let t = s.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    (t.len() == 4 && t.chars().all(|c| c.is_ascii_hexdigit())).then(|| t.to_ascii_lowercase())
}

fn validate_rules(path: &Path, rules: &[RuleConfig]) -> Result<Vec<ResourceRule>, ConfigError> {
    let mut out: Vec<ResourceRule> = Vec::with_capacity(rules.len());
    for (index, rule) in rules.iter().enumerate() {
        let fail = |why: String| ConfigError::Rule {
            path: path.to_path_buf(),
            index,
            name: rule.name.clone(),
            why,
        };
        validate_resource_name(&rule.name).map_err(fail)?;
        let vendor = normalize_pci_id(&rule.selector.vendor).ok_or_else(|| {
            fail(format!(
                "vendor {:?} is not a 4-hex-digit PCI vendor id",
                rule.selector.vendor
            ))
        })?;
        let mut devices = Vec::new();
        for d in rule.selector.device.iter().chain(&rule.selector.devices) {
            let id =
                normalize_pci_id(d).ok_or_else(|| fail(format!("device {d:?} is not a 4-hex-digit PCI device id")))?;
            if !devices.contains(&id) {
                devices.push(id);
            }
        }
        devices.sort();
        // A PCI address is 12 characters; the kubelet limits device IDs to 63.
        if rule.id_prefix.len() + 12 > crate::resources::MAX_DEVICE_ID_LEN {
            return Err(fail(format!(
                "idPrefix {:?} makes device IDs longer than {} characters",
                rule.id_prefix,
                crate::resources::MAX_DEVICE_ID_LEN
            )));
        }
        if !rule
            .id_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(fail(format!(
                "idPrefix {:?} may only hold letters, digits, '-', '_', '.', ':'",
                rule.id_prefix
            )));
        }
        if let Some(earlier) = out.iter().find(|r| r.vendor == vendor && r.devices == devices) {
            return Err(fail(format!(
                "same selector as the earlier rule {:?}; it could never match",
                earlier.name
            )));
        }
        out.push(ResourceRule {
            name: rule.name.clone(),
            vendor,
            devices,
            id_prefix: rule.id_prefix.clone(),
        });
    }
    Ok(out)
}

/// Checks an extended resource name: `<DNS subdomain>/<name>`, name 1..=63 characters of
/// `[A-Za-z0-9._-]` starting and ending alphanumeric, domain not `kubernetes.io`.
pub fn validate_resource_name(name: &str) -> Result<(), String> {
    let Some((domain, local)) = name.split_once('/') else {
        return Err(format!(
            "resource name {name:?} must be <domain>/<name>, e.g. amd.com/mi300x-hbm"
        ));
    };
    validate_dns_subdomain(domain).map_err(|why| format!("resource name {name:?}: domain {why}"))?;
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        return Err(format!("resource name {name:?}: the kubernetes.io domain is reserved"));
    }
    if local.is_empty() || local.len() > 63 {
        return Err(format!(
            "resource name {name:?}: the part after '/' must be 1 to 63 characters"
        ));
    }
    let alnum_ends =
        local.starts_with(|c: char| c.is_ascii_alphanumeric()) && local.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !alnum_ends
        || !local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "resource name {name:?}: the part after '/' may only hold letters, digits, '-', '_', '.' and must start and end with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_dns_subdomain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() || domain.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("must be lowercase DNS labels (a-z, 0-9, '-') separated by '.'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn host_dev_root_defaults_to_dev_whatever_the_dev_root() {
        let args = RunArgs {
            dev_root: Some("/host/dev".into()),
            ..RunArgs::default()
        };
        let s = resolve(&args, parse_file(Path::new("c.yaml"), "").unwrap()).unwrap();
        assert_eq!(s.dev_root, PathBuf::from("/host/dev"));
        assert_eq!(s.host_dev_root, PathBuf::from("/dev"));
        let file = parse_file(Path::new("c.yaml"), "hostDevRoot: /file/dev\n").unwrap();
        assert_eq!(
            resolve(&RunArgs::default(), file).unwrap().host_dev_root,
            PathBuf::from("/file/dev")
        );
        let args = RunArgs {
            host_dev_root: Some("/flag/dev".into()),
            ..RunArgs::default()
        };
        let file = parse_file(Path::new("c.yaml"), "hostDevRoot: /file/dev\n").unwrap();
        assert_eq!(resolve(&args, file).unwrap().host_dev_root, PathBuf::from("/flag/dev"));
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file = parse_file(
            Path::new("c.yaml"),
            "devicePluginDir: /file/dp\nsysfsRoot: /file/root\nregistration: plugin-watcher\ndefaultDialect: sp-mem\nresources:\n  - name: amd.com/mi300x-hbm\n    selector:\n      vendor: \"0x1002\"\n      device: \"74A1\"\n",
        )
        .unwrap();
        let args = RunArgs {
            device_plugin_dir: Some("/flag/dp".into()),
            ..RunArgs::default()
        };
        let s = resolve(&args, file).unwrap();
        assert_eq!(s.device_plugin_dir, PathBuf::from("/flag/dp"));
        assert_eq!(s.sysfs_root, PathBuf::from("/file/root"));
        assert_eq!(s.registration, RegistrationMode::PluginWatcher);
        assert_eq!(s.dev_root, PathBuf::from("/dev"));
        assert_eq!(s.poll_interval, Duration::from_secs(1));
        assert_eq!(s.label_domain, "hbm-passthrough.dev");
        assert_eq!(
            s.rules,
            vec![ResourceRule {
                name: "amd.com/mi300x-hbm".into(),
                vendor: "1002".into(),
                devices: vec!["74a1".into()],
                id_prefix: String::new()
            }]
        );
    }

    #[test]
    fn bad_resource_names_are_rejected_with_the_rule_named() {
        for (name, want) in [
            ("mi300x", "must be <domain>/<name>"),
            ("AMD.com/x", "lowercase DNS labels"),
            ("amd.com/-x", "must start and end"),
            ("kubernetes.io/gpu", "reserved"),
        ] {
            let text = format!("resources:\n  - name: {name:?}\n    selector: {{vendor: \"1002\"}}\n");
            let err = parse_file(Path::new("c.yaml"), &text).unwrap_err().to_string();
            assert!(err.contains("resource rule 0") && err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn unknown_keys_bad_ids_and_long_prefixes_are_rejected() {
        let err = parse_file(Path::new("c.yaml"), "resourcez: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `resourcez`"), "{err}");
        let err = parse_file(
            Path::new("c.yaml"),
            "resources:\n  - name: a.io/b\n    selector: {vendor: \"10x2\"}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "config file c.yaml: resource rule 0 (\"a.io/b\"): vendor \"10x2\" is not a 4-hex-digit PCI vendor id"
        );
        let prefix = "p".repeat(52);
        let text =
            format!("resources:\n  - name: a.io/b\n    selector: {{vendor: \"1002\"}}\n    idPrefix: {prefix}\n");
        let err = parse_file(Path::new("c.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("longer than 63 characters"), "{err}");
    }

    #[test]
    fn empty_file_is_all_defaults_and_poll_interval_is_bounded() {
        let file = parse_file(Path::new("c.yaml"), "").unwrap();
        assert_eq!(file, LoadedConfig::default());
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("2s").unwrap(), Duration::from_secs(2));
        let args = RunArgs {
            health_poll_interval: Some("5ms".into()),
            ..RunArgs::default()
        };
        assert_eq!(
            resolve(&args, file).unwrap_err().to_string(),
            "health poll interval \"5ms\" is not a duration between 10ms and 60s (write e.g. 500ms or 2s)"
        );
    }

    #[test]
    fn discovery_section_is_typed_and_validated() {
        let ok = parse_file(
            Path::new("c.yaml"),
            "discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n      nodes: [2]\n      dax: [\"dax0.0\"]\n",
        )
        .unwrap();
        assert_eq!(ok.file.discovery.gpus.len(), 1);
        assert_eq!(ok.file.discovery.gpus[0].nodes, vec![2]);
        let err = parse_file(
            Path::new("c.yaml"),
            "discovery:\n  gpus:\n    - gpu: \"0000:c1:00.0\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config file c.yaml is not valid:") && err.contains("names neither nodes nor dax devices"),
            "{err}"
        );
    }
}
