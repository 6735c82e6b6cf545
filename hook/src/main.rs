//! hbm-hook: parses the command line and dispatches to one front end (see the library's docs).
//! `argv[0]` picks the front end first: `hbm-qemu*` is the QEMU adapter, `hbm-passthrough` the
//! libvirt qemu.d hook, `onDefineDomain` / `preCloudInitIso` KubeVirt's sidecar-shim commands.
//!
//! Exit codes of `discover`: 0 inventory printed, 2 unusable sysfs root or bad config.
//! Exit codes of `rewrite`: 0 ok (also "nothing to do"), 1 I/O or internal, 2 bad input,
//! 3 cannot satisfy.
//! Exit codes of `libvirt`, `kubevirt-sidecar`, `onDefineDomain`, `preCloudInitIso`: see
//! docs/frontends.md.
//!
//! A command line clap refuses is one line on stderr, `hbm-hook <command>: <what> (see hbm-hook
//! <command> --help)`, and exit 2; `--help` and `--version` print as clap prints them (exit 0).
//! clap's colour follows the logging rule: only on a terminal, never with `NO_COLOR`.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{ColorChoice, CommandFactory, FromArgMatches, Parser, Subcommand};

use hbm_hook::{doctor, kubevirt, libvirt, qemu, rewrite_cli, verify_guest};
use hbm_shell::logging::{LogFormat, colour_allowed, init_logging};

#[derive(Parser, Debug)]
#[command(
    name = "hbm-hook",
    version,
    about = "Gives VMs a passed-through GPU together with its HBM as a NUMA node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show which GPUs own which HBM regions on this host (table, or --json for the contract).
    Discover(topology::cli::DiscoverArgs),
    /// Rewrite a libvirt domain definition: one SPM NUMA cell per HBM region of each PCI
    /// hostdev, behind a pcie-expander-bus naming it, with an ACPI Generic Initiator.
    Rewrite(rewrite_cli::RewriteArgs),
    /// Run as the QEMU argv adapter (what `<emulator>` names via an `hbm-qemu` symlink): apply the
    /// domain's HBM_QEMU_INSTRUCTIONS to QEMU's arguments and exec the real QEMU.
    Qemu(qemu::cli::QemuArgs),
    /// Is this host ready? One line per check (IOMMU, GPUs, HBM regions, dax, QEMU, libvirt, hook,
    /// adapter) with pass/warn/fail and what to do; exit 1 when something required is missing.
    Doctor(doctor::cli::DoctorArgs),
    /// Serve the KubeVirt hook sidecar (Info + OnDefineDomain, v1alpha1..3) on a unix socket in
    /// virt-launcher's hook directory.
    KubevirtSidecar(kubevirt::cli::SidecarArgs),
    /// KubeVirt sidecar-shim convention: print the domain XML rewritten for the VMI.
    #[command(name = "onDefineDomain")]
    OnDefineDomain(kubevirt::cli::ShimDefineArgs),
    /// KubeVirt sidecar-shim convention: print the cloud-init data back unchanged.
    #[command(name = "preCloudInitIso")]
    PreCloudInitIso(kubevirt::cli::ShimCloudInitArgs),
    /// Run as the libvirt qemu hook (what /etc/libvirt/hooks/qemu.d/hbm-passthrough runs):
    /// check and claim HBM at prepare, release at release, rewrite at migrate/restore.
    Libvirt(libvirt::cli::LibvirtArgs),
    /// Run inside a VM: does each GPU-class device sit on a CPU-less, online NUMA node holding
    /// its HBM (SPM or normal), kept online by a Generic Initiator? Exit 0 when every GPU has its
    /// HBM, 1 otherwise; each failure names what the host must change.
    VerifyGuest(verify_guest::cli::VerifyGuestArgs),
}

fn init_default_logging() {
    init_logging("warn", LogFormat::Text);
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(argv0) = argv.first() {
        // `hbm-qemu` (libvirt's <emulator>): every argument is QEMU's, no CLI parsing.
        if qemu::cli::invoked_as_adapter(argv0) {
            return qemu::cli::main_as_emulator(argv[1..].to_vec());
        }
        // The libvirt qemu.d hook (`hbm-passthrough`): libvirt's four arguments, no flags.
        if libvirt::cli::invoked_as_hook(argv0) {
            return libvirt::cli::main_from_argv(&argv, init_default_logging);
        }
    }
    // `onDefineDomain` / `preCloudInitIso` (KubeVirt's sidecar shim runs these names).
    let argv = kubevirt::cli::shim_argv(&argv).unwrap_or(argv);
    let cli = match parse(&argv) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_default_logging();
    dispatch(cli.command)
}

/// The parsed command line, or the exit code after clap's help / version text or the one-line
/// usage error was printed.
fn parse(argv: &[OsString]) -> Result<Cli, ExitCode> {
    let colour = if colour_allowed() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    Cli::command()
        .color(colour)
        .try_get_matches_from(argv)
        .and_then(|matches| Cli::from_arg_matches(&matches))
        .map_err(|error| report_usage_error(argv, &error))
}

/// Prints help / version as clap does, any other error as one line; returns the exit code.
fn report_usage_error(argv: &[OsString], error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(hbm_shell::exit::BAD_INPUT));
    }
    let command = command_name(argv);
    // The first line of clap's (uncoloured) text is the error; the rest is usage and tips.
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let what = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!(
        "{}",
        hbm_shell::one_line(&format!("{command}: {what} (see {command} --help)"))
    );
    ExitCode::from(hbm_shell::exit::BAD_INPUT)
}

/// `hbm-hook <subcommand>` for the first argument naming one, else `hbm-hook`.
fn command_name(argv: &[OsString]) -> String {
    let cli = Cli::command();
    let subcommand = argv.iter().skip(1).find_map(|arg| {
        cli.get_subcommands()
            .map(clap::Command::get_name)
            .find(|name| arg.to_str() == Some(*name))
    });
    match subcommand {
        Some(name) => format!("hbm-hook {name}"),
        None => "hbm-hook".to_string(),
    }
}

fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Discover(args) => topology::cli::run_discover(&args),
        Command::Rewrite(args) => rewrite_cli::cli::main(&args),
        Command::Qemu(args) => qemu::cli::run(args),
        Command::Doctor(args) => doctor::cli::run(&args),
        Command::KubevirtSidecar(args) => kubevirt::cli::run_sidecar(&args),
        Command::OnDefineDomain(args) => kubevirt::cli::run_shim_define(&args),
        Command::PreCloudInitIso(args) => kubevirt::cli::run_shim_cloud_init(&args),
        Command::Libvirt(args) => libvirt::cli::main(&args.call, args.config.as_deref()),
        Command::VerifyGuest(args) => verify_guest::cli::run(&args),
    }
}
