//! `hbm-hook doctor [--sysfs-root DIR] [--qemu PATH] [--json]`: is this host ready to give VMs a
//! GPU with its HBM? One line per check, `pass` / `warn` / `fail`, and what to do for the last two.
//!
//! Checks: IOMMU on; each GPU's driver (vfio-pci?) and IOMMU group; the HBM regions discovery
//! finds (`topology::discover`) and their health; dax devices and their mode (devdax vs
//! system-ram); QEMU version, `acpi-generic-initiator`, and the SPM dialects it speaks (the
//! capability probe, cached); libvirt version and native `<acpi nodeset>` support (libvirt's own
//! domain schema); the libvirt hook and the QEMU adapter installed.
//!
//! [`gather`] reads the host (sysfs, the QEMU probe, `libvirtd --version`, the schema and install
//! paths) into [`HostFacts`]; [`evaluate`] (pure) turns facts into [`Check`]s.
//!
//! Exit codes: 0 nothing failed (warnings allowed), 1 something required is missing or broken,
//! 2 bad input (sysfs root unusable, config unreadable).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde::Serialize;
use topology::{Health, Inventory, Memmap};

use crate::config::{ConfigError, HookConfig};
use crate::probe::{self, Capabilities};

/// Where the libvirt install puts the qemu.d hook (deploy/libvirt/install.sh).
pub const DEFAULT_HOOK: &str = "/etc/libvirt/hooks/qemu.d/hbm-passthrough";
/// libvirt's domain schema, read for native `<acpi nodeset>` support.
pub const DEFAULT_LIBVIRT_SCHEMA: &str = "/usr/share/libvirt/schemas/domaincommon.rng";
/// Version of the `--json` document layout.
pub const JSON_VERSION: u32 = 1;

/// `hbm-hook doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// sysfs/procfs root to inspect (a fixture tree in tests).
    #[arg(long, default_value = "/")]
    pub sysfs_root: PathBuf,
    /// QEMU binary to probe [default: config qemu.emulator, /usr/bin/qemu-system-x86_64].
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Config file [default: /etc/hbm-passthrough/hook.yaml when it exists].
    #[arg(long, env = crate::adapter_command::CONFIG_ENV)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `iommu`, `gpu 0000:c1:00.0`, `hbm 0000:c1:00.0/node1`, `dax dax0.0`,
    /// `qemu`, `qemu generic-initiator`, `qemu spm-dialect`, `libvirt`, `libvirt acpi-nodeset`,
    /// `hook`, `adapter`, `discovery`.
    pub check: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do (warn and fail only).
    pub fix: Option<String>,
}

impl Check {
    fn pass(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// A dax device as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaxFact {
    pub name: String,
    /// `device_dax` (devdax), `kmem` (system-ram), `None` when unbound.
    pub driver: Option<String>,
    pub size_bytes: Option<u64>,
    pub target_node: Option<u32>,
}

/// An installed file: missing, present but not executable, or present and resolving to `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    Missing,
    NotExecutable,
    Executable { target: PathBuf },
}

/// Everything the checks look at, read from the host by [`gather`].
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// Number of IOMMU groups in `sys/kernel/iommu_groups`.
    pub iommu_groups: usize,
    pub inventory: Inventory,
    pub dax: Vec<DaxFact>,
    pub qemu_path: PathBuf,
    /// The probe result, or why there is none.
    pub qemu: Result<Capabilities, String>,
    /// `9.0.0`, or `None` when no libvirt daemon is installed.
    pub libvirt_version: Option<String>,
    /// Whether libvirt's domain schema allows `<acpi nodeset=..>`; `None` when the schema is absent.
    pub libvirt_acpi_nodeset: Option<bool>,
    pub hook_path: PathBuf,
    pub hook: Installed,
    pub adapter_path: PathBuf,
    pub adapter: Installed,
}

/// Why doctor could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Discover(#[from] topology::DiscoverError),
}

fn gib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The checks, in report order. Pure.
pub fn evaluate(f: &HostFacts) -> Vec<Check> {
    let mut out = Vec::new();
    if f.iommu_groups > 0 {
        out.push(Check::pass("iommu", format!("on ({} IOMMU groups)", f.iommu_groups)));
    } else {
        out.push(Check::fail(
            "iommu",
            "off: no IOMMU groups in /sys/kernel/iommu_groups",
            "enable VT-d / AMD-Vi in firmware and boot with intel_iommu=on or amd_iommu=on (plus iommu=pt)",
        ));
    }

    if f.inventory.gpus.is_empty() {
        out.push(Check::warn(
            "gpu",
            "no GPU found on the PCI bus",
            "nothing to pass through on this host",
        ));
    }
    for g in &f.inventory.gpus {
        let name = format!("gpu {}", g.address);
        let id = format!("{}:{}", g.vendor, g.device);
        match (g.iommu_group, g.driver.as_deref()) {
            (None, _) => out.push(Check::fail(
                name,
                format!("{id} has no IOMMU group"),
                "turn the IOMMU on; a device without a group cannot be passed through",
            )),
            (Some(group), Some("vfio-pci")) => out.push(Check::pass(
                name,
                format!("{id} bound to vfio-pci, IOMMU group {group}"),
            )),
            (Some(group), driver) => out.push(Check::warn(
                name,
                format!("{id} bound to {}, IOMMU group {group}", driver.unwrap_or("no driver")),
                "bind it to vfio-pci (libvirt's managed='yes' does so at VM start; KubeVirt needs it bound beforehand)",
            )),
        }
    }

    if f.inventory.regions.is_empty() {
        out.push(Check::fail(
            "hbm",
            "no HBM regions found",
            "check `hbm-hook discover`; if firmware does not describe the HBM, map GPUs to NUMA nodes or dax devices in the config's discovery.gpus",
        ));
    }
    for r in &f.inventory.regions {
        let name = format!("hbm {}", r.id);
        let node = r
            .host_node
            .map_or("no host node".to_string(), |n| format!("host node {n}"));
        let kind = match r.memmap {
            Memmap::Spm => "SPM",
            Memmap::Normal => "normal RAM",
        };
        let dax = r.dax.as_deref().map(|d| format!(", {d}")).unwrap_or_default();
        let detail = format!(
            "{} on {node} ({kind}, from {}{dax})",
            gib(r.size_bytes),
            r.source.as_str()
        );
        // Memory reachable only through its dax device needs that device in devdax mode, else
        // /dev/daxX.Y does not exist and the adapter refuses the domain.
        let dax_driver = r.dax.as_deref().filter(|_| !r.online).map(|path| {
            let dev = path.rsplit('/').next().unwrap_or(path);
            let driver = f.dax.iter().find(|d| d.name == dev).and_then(|d| d.driver.clone());
            (dev, driver)
        });
        match (r.health, dax_driver) {
            (Health::Healthy, Some((dev, driver))) if driver.as_deref() != Some("device_dax") => out.push(Check::fail(
                name,
                format!(
                    "{detail}: {dev} is not in devdax mode (driver {})",
                    driver.as_deref().unwrap_or("none")
                ),
                format!("`daxctl reconfigure-device --mode=devdax {dev}`; VMs get this memory through /dev/{dev}"),
            )),
            (Health::Healthy, _) => out.push(Check::pass(name, detail)),
            (Health::Unhealthy, _) => out.push(Check::fail(
                name,
                format!(
                    "{detail}: unhealthy: {}",
                    r.reason.as_deref().unwrap_or("no reason given")
                ),
                "fix what the reason names; an unhealthy region is not offered to VMs",
            )),
        }
    }
    for w in &f.inventory.warnings {
        out.push(Check::warn(
            "discovery",
            w.clone(),
            "check the file named; discovery skipped or guessed around it",
        ));
    }

    for d in &f.dax {
        let name = format!("dax {}", d.name);
        let size = d.size_bytes.map(gib).unwrap_or_else(|| "unknown size".into());
        let node = d.target_node.map(|n| format!(", target node {n}")).unwrap_or_default();
        match d.driver.as_deref() {
            Some("device_dax") => out.push(Check::pass(name, format!("devdax (/dev/{}), {size}{node}", d.name))),
            Some("kmem") => out.push(Check::pass(
                name,
                format!("system-ram (kmem: onlined into its NUMA node), {size}{node}"),
            )),
            other => out.push(Check::warn(
                name,
                format!("{size}{node}, driver {}", other.unwrap_or("none")),
                format!(
                    "bind it: `daxctl reconfigure-device --mode=devdax {}` (or --mode=system-ram)",
                    d.name
                ),
            )),
        }
    }

    let qemu = f.qemu_path.display();
    match &f.qemu {
        // Neither QEMU nor libvirt on the host is a KubeVirt node (both live in virt-launcher);
        // a libvirt host without its QEMU cannot start anything.
        Err(why) if f.libvirt_version.is_none() => out.push(Check::warn(
            "qemu",
            format!("{qemu}: {why}"),
            "fine on KubeVirt nodes (QEMU runs in virt-launcher); on a libvirt host install QEMU >= 9.0 (Debian 12: qemu-system-x86 from bookworm-backports) or set qemu.emulator",
        )),
        Err(why) => out.push(Check::fail(
            "qemu",
            format!("{qemu}: {why}"),
            "install QEMU >= 9.0 (Debian 12: qemu-system-x86 from bookworm-backports) or set qemu.emulator",
        )),
        Ok(caps) => {
            out.push(Check::pass("qemu", format!("{qemu}: QEMU {}", caps.version)));
            if caps.acpi_generic_initiator {
                out.push(Check::pass(
                    "qemu generic-initiator",
                    "acpi-generic-initiator available",
                ));
            } else {
                out.push(Check::fail(
                    "qemu generic-initiator",
                    "no acpi-generic-initiator (QEMU < 9.0): guests cannot tie the GPU to its HBM node",
                    "install QEMU >= 9.0 (Debian 12: bookworm-backports)",
                ));
            }
            if caps.memmap_type || caps.sp_mem {
                out.push(Check::pass("qemu spm-dialect", format!("speaks {}", caps.dialects())));
            } else {
                out.push(Check::warn(
                    "qemu spm-dialect",
                    "speaks neither memmap-type nor sp-mem",
                    "use the kernel-cmdline dialect (direct kernel boot) or none; a QEMU with the SPM series adds the others",
                ));
            }
        }
    }

    match &f.libvirt_version {
        Some(v) => out.push(Check::pass("libvirt", format!("libvirt {v}"))),
        None => out.push(Check::warn(
            "libvirt",
            "no libvirt daemon found",
            "install libvirt-daemon-driver-qemu on plain libvirt hosts (KubeVirt nodes run libvirt inside virt-launcher)",
        )),
    }
    match f.libvirt_acpi_nodeset {
        Some(true) => out.push(Check::pass(
            "libvirt acpi-nodeset",
            "native <acpi nodeset> available (rewrite.native_generic_initiator: true may use it)",
        )),
        Some(false) => out.push(Check::pass(
            "libvirt acpi-nodeset",
            "no native <acpi nodeset>: the rewriter adds the Generic Initiator through <qemu:commandline>",
        )),
        None => out.push(Check::warn(
            "libvirt acpi-nodeset",
            "libvirt's domain schema not found",
            "install libvirt0 (it ships /usr/share/libvirt/schemas; pass --libvirt-schema for another path)",
        )),
    }

    for (name, path, state, why) in [
        (
            "hook",
            &f.hook_path,
            &f.hook,
            "plain libvirt hosts need it to guard and rewrite domains",
        ),
        (
            "adapter",
            &f.adapter_path,
            &f.adapter,
            "domains using the memmap-type, sp-mem or dax instructions need it",
        ),
    ] {
        let path = path.display();
        match state {
            Installed::Executable { target } => out.push(Check::pass(name, format!("{path} -> {}", target.display()))),
            Installed::NotExecutable => out.push(Check::fail(
                name,
                format!("{path} is not executable"),
                "run deploy/libvirt/install.sh again",
            )),
            Installed::Missing => out.push(Check::warn(
                name,
                format!("{path} not installed"),
                format!("{why}: run deploy/libvirt/install.sh"),
            )),
        }
    }
    out
}

/// Whether any check failed.
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// The human report: one line per check, `fix` after an arrow.
pub fn render_text(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        s.push_str(&format!("{}  {:<width$}  {}", c.status.as_str(), c.check, c.detail));
        if let Some(fix) = &c.fix {
            s.push_str(" -> ");
            s.push_str(fix);
        }
        s.push('\n');
    }
    let count = |st: Status| checks.iter().filter(|c| c.status == st).count();
    s.push_str(&format!(
        "{} passed, {} warnings, {} failed\n",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    ));
    s
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema_version: u32,
    ok: bool,
    checks: &'a [Check],
}

/// The `--json` document.
pub fn render_json(checks: &[Check]) -> String {
    let report = JsonReport {
        schema_version: JSON_VERSION,
        ok: !failed(checks),
        checks,
    };
    let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
    s.push('\n');
    s
}

fn installed(path: &Path) -> Installed {
    match std::fs::metadata(path) {
        Err(_) => Installed::Missing,
        Ok(m) if m.permissions().mode() & 0o111 == 0 || !m.is_file() => Installed::NotExecutable,
        Ok(_) => Installed::Executable {
            target: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        },
    }
}

/// Whether some `<element name="acpi">` of libvirt's schema has a `nodeset` attribute.
pub fn schema_has_acpi_nodeset(rng: &str) -> bool {
    let mut rest = rng;
    while let Some(at) = rest.find("<element name=\"acpi\">") {
        let body = &rest[at..];
        let end = body.find("</element>").unwrap_or(body.len());
        if body[..end].contains("name=\"nodeset\"") {
            return true;
        }
        rest = &body[end..];
    }
    false
}

fn libvirt_version(libvirtd: &Path) -> Option<String> {
    let out = Command::new(libvirtd).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "libvirtd (libvirt) 9.0.0"
    out.status
        .success()
        .then(|| text.split_whitespace().last().map(String::from))
        .flatten()
}

/// Reads the host.
pub fn gather(args: &DoctorArgs) -> Result<HostFacts, DoctorError> {
    let config = HookConfig::load(args.config.as_deref())?;
    let root = &args.sysfs_root;
    let inventory = topology::discover(root, &config.discovery)?;
    let iommu_groups = std::fs::read_dir(root.join("sys/kernel/iommu_groups"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    let dax = topology::dax::scan(&topology::sysfs::Sysfs::new(root))
        .devices
        .into_iter()
        .map(|d| DaxFact {
            size_bytes: d.size.as_ref().ok().copied(),
            name: d.name,
            driver: d.driver,
            target_node: d.target_node,
        })
        .collect();
    let qemu_path = args.qemu.clone().unwrap_or(config.qemu.emulator.clone());
    let cache = args
        .probe_cache_dir
        .clone()
        .unwrap_or(config.qemu.probe_cache_dir.clone());
    let qemu = probe::capabilities(&qemu_path, &cache, probe::PROBE_TIMEOUT).map_err(|e| e.to_string());
    let adapter_path = args
        .adapter
        .clone()
        .unwrap_or_else(|| PathBuf::from(&config.rewrite.adapter_path));
    Ok(HostFacts {
        iommu_groups,
        inventory,
        dax,
        qemu_path,
        qemu,
        libvirt_version: libvirt_version(&args.libvirtd),
        libvirt_acpi_nodeset: std::fs::read_to_string(&args.libvirt_schema)
            .ok()
            .map(|s| schema_has_acpi_nodeset(&s)),
        hook: installed(&args.hook),
        hook_path: args.hook.clone(),
        adapter: installed(&adapter_path),
        adapter_path,
    })
}

/// `hbm-hook doctor`: prints the report, returns the documented exit code.
pub fn run(args: &DoctorArgs) -> ExitCode {
    match gather(args) {
        Err(e) => {
            eprintln!("hbm-hook doctor: {e}");
            ExitCode::from(2)
        }
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
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_detection() {
        let v9 = r#"<define name="acpi"><element name="acpi"><optional><attribute name="index"/></optional></element></define>"#;
        assert!(!schema_has_acpi_nodeset(v9));
        let newer = r#"<element name="acpi"><optional><attribute name="index"/></optional></element>
<element name="hostdev"><element name="acpi"><attribute name="nodeset"><ref name="cpuset"/></attribute></element></element>"#;
        assert!(schema_has_acpi_nodeset(newer));
    }

    #[test]
    fn empty_host_fails_iommu_and_hbm() {
        let facts = HostFacts {
            iommu_groups: 0,
            inventory: Inventory::empty("/x"),
            dax: vec![],
            qemu_path: "/q".into(),
            qemu: Err("gone".into()),
            libvirt_version: None,
            libvirt_acpi_nodeset: None,
            hook_path: "/h".into(),
            hook: Installed::Missing,
            adapter_path: "/a".into(),
            adapter: Installed::NotExecutable,
        };
        let checks = evaluate(&facts);
        let statuses: Vec<(&str, Status)> = checks.iter().map(|c| (c.check.as_str(), c.status)).collect();
        assert_eq!(
            statuses,
            vec![
                ("iommu", Status::Fail),
                ("gpu", Status::Warn),
                ("hbm", Status::Fail),
                ("qemu", Status::Warn),
                ("libvirt", Status::Warn),
                ("libvirt acpi-nodeset", Status::Warn),
                ("hook", Status::Warn),
                ("adapter", Status::Fail),
            ]
        );
        assert!(failed(&checks));
        assert!(render_text(&checks).ends_with("0 passed, 5 warnings, 3 failed\n"));
        // With libvirt installed, a missing QEMU is required.
        let libvirt_host = HostFacts {
            libvirt_version: Some("9.0.0".into()),
            ..facts
        };
        let qemu = evaluate(&libvirt_host).into_iter().find(|c| c.check == "qemu").unwrap();
        assert_eq!(qemu.status, Status::Fail);
    }
}
