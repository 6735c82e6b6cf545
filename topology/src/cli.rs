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

/// Runs `discover`: prints the table (or JSON) on stdout, warnings are part of the output.
pub fn run_discover(args: &DiscoverArgs) -> ExitCode {
    let config = match &args.config {
        Some(p) => match DiscoveryConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("discover: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => DiscoveryConfig::default(),
    };
    match discover(&args.sysfs_root, &config) {
        Ok(inv) => {
            for w in &inv.warnings {
                tracing::debug!(root = %args.sysfs_root.display(), warning = %w, "discovery");
            }
            if args.json {
                print!("{}", inv.to_json());
            } else {
                print!("{}", render_table(&inv));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("discover: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
