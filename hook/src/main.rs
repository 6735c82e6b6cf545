//! hbm-hook: parses the command line and dispatches to one front end (see the library's docs).
//! `argv[0]` picks the front end first: `hbm-qemu*` is the QEMU adapter, `hbm-passthrough` the
//! libvirt qemu.d hook, `onDefineDomain` / `preCloudInitIso` KubeVirt's sidecar-shim commands.
//!
//! Exit codes of `discover`: 0 inventory printed, 2 unusable sysfs root or bad config.
//! Exit codes of `rewrite`: 0 ok (also "nothing to do"), 1 I/O or internal, 2 bad input,
//! 3 cannot satisfy.
//! Exit codes of `libvirt`, `kubevirt-sidecar`, `onDefineDomain`, `preCloudInitIso`: see
//! docs/frontends.md.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hbm_hook::{doctor, kubevirt, libvirt, qemu, rewrite_cli, verify_guest};
use hbm_shell::logging::{LogFormat, init_logging};

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
    let cli = match kubevirt::cli::shim_argv(&argv) {
        Some(shim) => Cli::parse_from(shim),
        None => Cli::parse_from(&argv),
    };
    init_default_logging();
    dispatch(cli.command)
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
