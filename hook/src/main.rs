//! hbm-hook: the libvirt domain-XML hook and its tools.
//!
//! Exit codes of `discover`: 0 inventory printed, 2 unusable sysfs root or bad config.
//! Exit codes of `rewrite`: 0 ok (also "nothing to do"), 1 I/O or internal, 2 bad input,
//! 3 cannot satisfy.
//! Exit codes of `libvirt`, `kubevirt-sidecar`, `onDefineDomain`, `preCloudInitIso`: see
//! docs/frontends.md.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hbm_hook::rewrite_command::{self, RewriteArgs};

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
    Rewrite(RewriteArgs),
    /// Run as the QEMU argv adapter (what `<emulator>` names via an `hbm-qemu` symlink): apply the
    /// domain's HBM_QEMU_INSTRUCTIONS to QEMU's arguments and exec the real QEMU.
    Qemu(hbm_hook::adapter_command::QemuArgs),
    /// Is this host ready? One line per check (IOMMU, GPUs, HBM regions, dax, QEMU, libvirt, hook,
    /// adapter) with pass/warn/fail and what to do; exit 1 when something required is missing.
    Doctor(hbm_hook::doctor::DoctorArgs),
    /// Serve the KubeVirt hook sidecar (Info + OnDefineDomain, v1alpha1..3) on a unix socket in
    /// virt-launcher's hook directory.
    KubevirtSidecar(hbm_hook::kubevirt_command::SidecarArgs),
    /// KubeVirt sidecar-shim convention: print the domain XML rewritten for the VMI.
    #[command(name = "onDefineDomain")]
    OnDefineDomain(hbm_hook::kubevirt_command::ShimDefineArgs),
    /// KubeVirt sidecar-shim convention: print the cloud-init data back unchanged.
    #[command(name = "preCloudInitIso")]
    PreCloudInitIso(hbm_hook::kubevirt_command::ShimCloudInitArgs),
    /// Run as the libvirt qemu hook (what /etc/libvirt/hooks/qemu.d/hbm-passthrough runs):
    /// check and claim HBM at prepare, release at release, rewrite at migrate/restore.
    Libvirt(hbm_hook::libvirt_hook::LibvirtArgs),
    /// Run inside a VM: does each GPU-class device sit on a CPU-less, online NUMA node holding
    /// its HBM (SPM or normal), kept online by a Generic Initiator? Exit 0 when every GPU has its
    /// HBM, 1 otherwise; each failure names what the host must change.
    VerifyGuest(hbm_hook::verify_guest::cli::VerifyGuestArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    // Invoked as `hbm-qemu` (libvirt's <emulator>): every argument is QEMU's, no CLI parsing.
    let mut args = std::env::args_os();
    if let Some(argv0) = args.next()
        && hbm_hook::adapter_command::invoked_as_adapter(&argv0)
    {
        return hbm_hook::adapter_command::main_as_emulator(args.collect());
    }
    // Invoked as the libvirt qemu.d hook (`hbm-passthrough`): libvirt's four arguments, no flags.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.first().is_some_and(|a| hbm_hook::libvirt_hook::invoked_as_hook(a)) {
        return ExitCode::from(hbm_hook::libvirt_hook::main_from_argv(&argv, init_tracing));
    }
    // Invoked as `onDefineDomain` / `preCloudInitIso` (KubeVirt's sidecar shim runs these names).
    let cli = match hbm_hook::kubevirt_command::shim_argv(&argv) {
        Some(shim) => Cli::parse_from(shim),
        None => Cli::parse(),
    };
    init_tracing();
    match cli.command {
        Command::Discover(args) => topology::cli::run_discover(&args),
        Command::Qemu(args) => hbm_hook::adapter_command::run(args),
        Command::Doctor(args) => hbm_hook::doctor::run(&args),
        Command::Rewrite(args) => ExitCode::from(rewrite_command::main(&args)),
        Command::KubevirtSidecar(args) => hbm_hook::kubevirt_command::run_sidecar(&args),
        Command::OnDefineDomain(args) => hbm_hook::kubevirt_command::run_shim_define(&args),
        Command::PreCloudInitIso(args) => hbm_hook::kubevirt_command::run_shim_cloud_init(&args),
        Command::Libvirt(args) => ExitCode::from(hbm_hook::libvirt_hook::main(&args.call, args.config.as_deref())),
        Command::VerifyGuest(args) => hbm_hook::verify_guest::cli::run(&args),
    }
}
