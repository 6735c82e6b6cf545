//! The `discover` subcommand shared by `hbm-hook` and `hbm-device-plugin` (feature `cli`).
//!
//! Exit codes: 0 = inventory printed (even with unhealthy regions or warnings); 2 = the sysfs
//! root is unusable or the config file is unreadable/invalid (one line on stderr).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{DiscoveryConfig, discover, render_table};

/// Arguments of `discover`.
#[derive(Clone, Debug, clap::Args)]
pub struct DiscoverArgs {
    /// Print the inventory as JSON (the documented contract) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Root of the sysfs/procfs tree to read (`/` on a host; a fixture tree in tests).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysfs_root: PathBuf,
    /// YAML config file whose `discovery:` section holds explicit GPU -> node/dax mappings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why `discover` printed no inventory.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverCommandError {
    /// The config file is unreadable or invalid (exit 2).
    #[error("{0}")]
    Config(#[from] crate::ConfigError),
    /// Discovery could not run (exit 2 for the root, 1 for a read failure).
    #[error("{0}")]
    Discover(#[from] crate::DiscoverError),
}

impl hbm_shell::ExitStatus for DiscoverCommandError {
    fn exit_code(&self) -> u8 {
        match self {
            DiscoverCommandError::Config(_) => hbm_shell::exit::BAD_INPUT,
            DiscoverCommandError::Discover(error) => error.exit_code(),
        }
    }
}

/// What `discover` prints on stdout.
pub fn discover_output(args: &DiscoverArgs) -> Result<String, DiscoverCommandError> {
    let config = match &args.config {
        Some(path) => DiscoveryConfig::load(path)?,
        None => DiscoveryConfig::default(),
    };
    let inventory = discover(&args.sysfs_root, &config)?;
    for warning in &inventory.warnings {
        tracing::debug!(root = %args.sysfs_root.display(), %warning, "discovery warning");
    }
    Ok(if args.json {
        inventory.to_json()
    } else {
        render_table(&inventory)
    })
}

/// Runs `discover`: the table (or JSON) on stdout and exit 0, or one line on stderr and exit 2
/// (bad root or config) or 1 (a folder discovery needs could not be read).
pub fn run_discover(args: &DiscoverArgs) -> ExitCode {
    match discover_output(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => hbm_shell::exit_with("discover", &error),
    }
}
