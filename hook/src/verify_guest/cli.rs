//! `hbm-hook verify-guest [--json] [--sysfs-root DIR]`: the guest's view, judged.
//!
//! Exit codes: 0 every GPU has its HBM; 1 a GPU lacks it (or there is no GPU); 2 the sysfs root
//! cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use topology::DiscoveryConfig;

/// Arguments of `verify-guest`.
#[derive(Clone, Debug, clap::Args)]
pub struct VerifyGuestArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Root of the guest's sysfs/procfs tree (`/` inside the guest).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysfs_root: PathBuf,
}

/// Why `verify-guest` could not judge the guest.
#[derive(Debug, thiserror::Error)]
pub enum VerifyGuestError {
    #[error("{0}")]
    Discover(#[from] topology::DiscoverError),
}

impl hbm_shell::ExitStatus for VerifyGuestError {
    fn exit_code(&self) -> u8 {
        hbm_shell::exit::BAD_INPUT
    }
}

/// Runs the command: the report on stdout, exit 0 or 1; or one line on stderr and exit 2.
pub fn run(args: &VerifyGuestArgs) -> ExitCode {
    let inventory = match topology::discover(&args.sysfs_root, &DiscoveryConfig::default()) {
        Ok(inventory) => inventory,
        Err(error) => return hbm_shell::exit_with("hbm-hook verify-guest", &VerifyGuestError::from(error)),
    };
    let mut srat_warnings = Vec::new();
    let srat = topology::read_srat(&topology::sysfs::Sysfs::new(&args.sysfs_root), &mut srat_warnings);
    for warning in &srat_warnings {
        tracing::warn!(%warning, "guest SRAT");
    }
    let report = super::verify(&inventory, srat.as_ref());
    if args.json {
        let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
        text.push('\n');
        print!("{text}");
    } else {
        print!("{}", super::render_text(&report));
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(hbm_shell::exit::FAILURE)
    }
}
