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

/// Exit code for an unusable root or a bad config.
pub const EXIT_USAGE: u8 = 2;

/// What `discover` prints on stdout, or the exit code and the one-line error for stderr.
pub fn discover_output(args: &DiscoverArgs) -> Result<String, (u8, String)> {
    let one_line = |s: String| s.replace('\n', " ");
    let config = match &args.config {
        Some(p) => DiscoveryConfig::load(p).map_err(|e| (EXIT_USAGE, one_line(format!("discover: {e}"))))?,
        None => DiscoveryConfig::default(),
    };
    let inv = discover(&args.sysfs_root, &config).map_err(|e| (e.exit_code(), one_line(format!("discover: {e}"))))?;
    for w in &inv.warnings {
        tracing::debug!(root = %args.sysfs_root.display(), warning = %w, "discovery warning");
    }
    Ok(if args.json { inv.to_json() } else { render_table(&inv) })
}

/// Runs `discover`: the table (or JSON) on stdout and exit 0, or one line on stderr and exit 2
/// (bad root or config) or 1 (a folder discovery needs could not be read).
pub fn run_discover(args: &DiscoverArgs) -> ExitCode {
    match discover_output(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err((code, line)) => {
            eprintln!("{line}");
            ExitCode::from(code)
        }
    }
}
