//! Settings of `hbm-dra-driver run`: flags (each with an environment variable) over the YAML
//! config file (the device plugin's format: resource rules and discovery overrides are read;
//! its plugin-only keys are ignored) over defaults.

use std::path::PathBuf;
use std::time::Duration;

use plugin::config::{ConfigError, LoadedConfig, ResourceRule};

/// Default driver name (a DNS subdomain).
pub const DEFAULT_DRIVER_NAME: &str = "hbm.passthrough.dev";
/// Default kubelet root directory.
pub const DEFAULT_KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";
/// Default CDI spec directory.
pub const DEFAULT_CDI_ROOT: &str = "/var/run/cdi";

/// Flags of `hbm-dra-driver run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Own Node name: the pool name and `spec.nodeName` of the published ResourceSlices
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Driver name (a DNS subdomain): the ResourceSlices' driver, the CDI vendor and the domain of
    /// the driver's own attributes
    #[arg(long, env = "HBM_DRA_DRIVER_NAME", default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// Kubelet root directory (holds plugins_registry/ and plugins/)
    #[arg(long, env = "HBM_KUBELET_ROOT_DIR", default_value = DEFAULT_KUBELET_ROOT_DIR)]
    pub kubelet_root_dir: PathBuf,
    /// Root holding sys/ (a fixture tree in tests)
    #[arg(long, env = "HBM_SYSFS_ROOT", default_value = "/")]
    pub sysfs_root: PathBuf,
    /// Where vfio/<group>, iommu and dax devices live as this process sees them
    #[arg(long, env = "HBM_DEV_ROOT", default_value = "/dev")]
    pub dev_root: PathBuf,
    /// Where the same device nodes live on the host (the CDI hostPath of each device node)
    #[arg(long, env = "HBM_HOST_DEV_ROOT", default_value = "/dev")]
    pub host_dev_root: PathBuf,
    /// Directory the container runtime reads CDI specs from
    #[arg(long, env = "HBM_CDI_ROOT", default_value = DEFAULT_CDI_ROOT)]
    pub cdi_root: PathBuf,
    /// YAML config file (resource rules, discovery overrides), read once at start
    #[arg(long, env = "HBM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Health/inventory poll interval, e.g. `500ms`, `2s`
    #[arg(long, env = "HBM_HEALTH_POLL_INTERVAL", default_value = "1s")]
    pub health_poll_interval: String,
    /// Delete this node's ResourceSlices on shutdown (uninstall)
    #[arg(long, env = "HBM_DRA_CLEANUP")]
    pub cleanup: bool,
    /// Log lines as JSON objects instead of text
    #[arg(long, env = "HBM_LOG_JSON")]
    pub log_json: bool,
}

/// The resolved settings the driver runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub node_name: String,
    pub driver_name: String,
    pub kubelet_root_dir: PathBuf,
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    pub host_dev_root: PathBuf,
    pub cdi_root: PathBuf,
    pub poll_interval: Duration,
    pub cleanup: bool,
    pub rules: Vec<ResourceRule>,
    pub discovery: topology::DiscoveryConfig,
}

/// Why the settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--driver-name {name:?} is not a DNS subdomain: {why} (use e.g. hbm.passthrough.dev)")]
    DriverName { name: String, why: String },
    #[error("--node-name {0:?} is empty or not a DNS subdomain (pass the Node's name, e.g. from the downward API)")]
    NodeName(String),
    #[error("--sysfs-root {0} holds no sys/ directory (mount the host's /sys at <root>/sys and pass <root>)")]
    SysfsRoot(PathBuf),
}

impl hbm_shell::ExitStatus for SettingsError {
    fn exit_code(&self) -> u8 {
        hbm_shell::exit::BAD_INPUT
    }
}

impl Settings {
    /// `<kubelet root>/plugins_registry/<driver>-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        self.kubelet_root_dir
            .join("plugins_registry")
            .join(format!("{}-reg.sock", self.driver_name))
    }

    /// `<kubelet root>/plugins/<driver>`: the DRA socket, checkpoint and metadata files.
    pub fn plugin_dir(&self) -> PathBuf {
        self.kubelet_root_dir.join("plugins").join(&self.driver_name)
    }

    /// `<plugin dir>/dra.sock`.
    pub fn dra_socket(&self) -> PathBuf {
        self.plugin_dir().join("dra.sock")
    }

    /// The measurement roots of the shared health checks.
    pub fn health_roots(&self) -> plugin::health::HealthRoots {
        plugin::health::HealthRoots {
            sysfs_root: self.sysfs_root.clone(),
            dev_root: self.dev_root.clone(),
            host_dev_root: self.host_dev_root.clone(),
        }
    }
}

/// Checks a DNS subdomain through the plugin's resource-name check (its subdomain check is
/// private): `<name>/x` is a valid resource name exactly when `name` is a valid subdomain outside
/// `kubernetes.io`.
fn dns_subdomain(name: &str) -> Result<(), String> {
    let probe = format!("{name}/x");
    plugin::config::validate_resource_name(&probe)
        .map_err(|why| why.replace(&format!("resource name {probe:?}: domain "), ""))
}

/// Reads the config file (when given) and merges it with the flags.
pub fn resolve(args: &RunArgs) -> Result<Settings, SettingsError> {
    let loaded = match &args.config {
        Some(path) => plugin::config::load_file(path)?,
        None => LoadedConfig::default(),
    };
    dns_subdomain(&args.driver_name).map_err(|why| SettingsError::DriverName {
        name: args.driver_name.clone(),
        why,
    })?;
    if dns_subdomain(&args.node_name).is_err() {
        return Err(SettingsError::NodeName(args.node_name.clone()));
    }
    if !args.sysfs_root.join("sys").is_dir() {
        return Err(SettingsError::SysfsRoot(args.sysfs_root.clone()));
    }
    Ok(Settings {
        node_name: args.node_name.clone(),
        driver_name: args.driver_name.clone(),
        kubelet_root_dir: args.kubelet_root_dir.clone(),
        sysfs_root: args.sysfs_root.clone(),
        dev_root: args.dev_root.clone(),
        host_dev_root: args.host_dev_root.clone(),
        cdi_root: args.cdi_root.clone(),
        poll_interval: plugin::config::parse_interval(&args.health_poll_interval)?,
        cleanup: args.cleanup,
        rules: loaded.rules,
        discovery: loaded.file.discovery,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("hbm-dra-driver").chain(args.iter().copied()))
            .unwrap()
            .run
    }

    #[test]
    fn defaults_and_derived_paths() {
        let settings = resolve(&parse(&["--node-name", "node-a"])).unwrap();
        assert_eq!(settings.driver_name, "hbm.passthrough.dev");
        assert_eq!(settings.cdi_root, PathBuf::from("/var/run/cdi"));
        assert_eq!(settings.poll_interval, Duration::from_secs(1));
        assert!(!settings.cleanup);
        assert_eq!(
            settings.registration_socket(),
            PathBuf::from("/var/lib/kubelet/plugins_registry/hbm.passthrough.dev-reg.sock")
        );
        assert_eq!(
            settings.dra_socket(),
            PathBuf::from("/var/lib/kubelet/plugins/hbm.passthrough.dev/dra.sock")
        );
    }

    #[test]
    fn bad_names_and_config_files_are_refused_with_the_flag_named() {
        let error = resolve(&parse(&["--node-name", "node-a", "--driver-name", "Bad_Name"])).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("--driver-name \"Bad_Name\" is not a DNS subdomain"),
            "{error}"
        );
        let error = resolve(&parse(&["--node-name", "", "--health-poll-interval", "1s"])).unwrap_err();
        assert!(error.to_string().starts_with("--node-name \"\""), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "resources: [{name: amd.com/mi300x-hbm, selector: {vendor: '1002'}}]\n",
        )
        .unwrap();
        let error = resolve(&parse(&[
            "--node-name",
            "n",
            "--sysfs-root",
            dir.path().to_str().unwrap(),
        ]))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "--sysfs-root {} holds no sys/ directory (mount the host's /sys at <root>/sys and pass <root>)",
                dir.path().display()
            )
        );
        let settings = resolve(&parse(&["--node-name", "n", "--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(settings.rules.len(), 1);
        assert_eq!(settings.rules[0].name, "amd.com/mi300x-hbm");
        std::fs::write(&file, "nonsense: 1\n").unwrap();
        let error = resolve(&parse(&["--node-name", "n", "--config", file.to_str().unwrap()])).unwrap_err();
        assert!(error.to_string().contains("is not valid"), "{error}");
    }
}
