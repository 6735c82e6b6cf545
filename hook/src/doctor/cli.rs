//! `hbm-hook doctor`: arguments, the run (gather, evaluate, render) and the exit codes: 0
//! nothing failed (warnings allowed), 1 something required is missing or broken, 2 bad input
//! (sysfs root unusable, config unreadable).

use std::path::PathBuf;
use std::process::ExitCode;

use hbm_shell::ExitStatus;

use super::checks::{Status, evaluate};
use super::facts::gather;
use super::report::{failed, render_json, render_text};
use crate::config::ConfigError;
use crate::inventory::InventoryError;

/// Where the libvirt install puts the qemu.d hook (deploy/libvirt/install.sh).
pub const DEFAULT_HOOK: &str = "/etc/libvirt/hooks/qemu.d/hbm-passthrough";
/// libvirt's domain schema, read for native `<acpi nodeset>` support.
pub const DEFAULT_LIBVIRT_SCHEMA: &str = "/usr/share/libvirt/schemas/domaincommon.rng";

/// `hbm-hook doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// sysfs/procfs root to inspect (a fixture tree in tests) [default: config sysfs_root, /].
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
    /// QEMU binary to probe [default: config qemu.emulator, /usr/bin/qemu-system-x86_64].
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Config file [default: /etc/hbm-passthrough/hook.yaml when it exists].
    #[arg(long, env = crate::qemu::cli::CONFIG_ENV)]
    pub config: Option<PathBuf>,
    /// Where probe results are cached [default: config qemu.probe_cache_dir].
    #[arg(long)]
    pub probe_cache_dir: Option<PathBuf>,
    /// The QEMU adapter's path [default: config rewrite.adapter_path, /usr/local/bin/hbm-qemu].
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The libvirt qemu.d hook's path.
    #[arg(long, default_value = DEFAULT_HOOK)]
    pub hook: PathBuf,
    /// libvirt's domain schema (RelaxNG).
    #[arg(long, default_value = DEFAULT_LIBVIRT_SCHEMA)]
    pub libvirt_schema: PathBuf,
    /// The libvirt daemon to ask for its version (`libvirtd --version`).
    #[arg(long, default_value = "libvirtd")]
    pub libvirtd: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why doctor could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

impl ExitStatus for DoctorError {
    /// Doctor could not look at the host at all: bad input.
    fn exit_code(&self) -> u8 {
        hbm_shell::exit::BAD_INPUT
    }
}

/// Something required is missing or broken (a check failed).
const CHECK_FAILED: u8 = 1;

/// `hbm-hook doctor`: prints the report, returns the documented exit code.
pub fn run(args: &DoctorArgs) -> ExitCode {
    match gather(args) {
        Err(e) => hbm_shell::exit_with("hbm-hook doctor", &e),
        Ok(facts) => {
            let checks = evaluate(&facts);
            for c in checks.iter().filter(|c| c.status != Status::Pass) {
                tracing::debug!(check = %c.check, status = c.status.as_str(), detail = %c.detail, "doctor");
            }
            if args.json {
                print!("{}", render_json(&checks));
            } else {
                print!("{}", render_text(&checks));
            }
            if failed(&checks) {
                ExitCode::from(CHECK_FAILED)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
