//! The doctor's checks: one pure function per check, [`HostFacts`] in, [`Check`]s out;
//! [`evaluate`] runs them all in report order.

use std::path::Path;

use serde::Serialize;
use topology::{Gpu, Health, Inventory, Memmap, Region};

use super::facts::{DaxFact, HostFacts, Installed, Looked};
use crate::qemu::probe::Capabilities;

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
    /// What was checked: `iommu`, `gpu 0000:c1:00.0`, `hbm 0000:c1:00.0/node1`,
    /// `kubevirt 0000:c1:00.0/node1`, `dax dax0.0`,
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
    pub(super) fn pass(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    pub(super) fn warn(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    pub(super) fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Sizes in the report: whole GiB, else MiB.
fn gib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The checks, in report order. Pure.
pub fn evaluate(f: &HostFacts) -> Vec<Check> {
    let mut out = vec![iommu(f.iommu_groups)];
    out.extend(gpus(&f.inventory));
    out.extend(hbm_regions(&f.inventory, &f.dax));
    out.extend(f.inventory.regions.iter().map(kubevirt_region));
    out.extend(discovery_warnings(&f.inventory));
    out.extend(f.dax.iter().map(dax_device));
    out.extend(qemu(f));
    out.push(libvirt(&f.libvirt_version));
    out.push(libvirt_acpi_nodeset(&f.libvirt_acpi_nodeset));
    out.push(installed(
        "hook",
        &f.hook_path,
        &f.hook,
        "plain libvirt hosts need it to guard and rewrite domains",
    ));
    out.push(installed(
        "adapter",
        &f.adapter_path,
        &f.adapter,
        "domains using the memmap-type, sp-mem or dax instructions need it",
    ));
    out
}

/// `iommu`: the IOMMU is on when the kernel made IOMMU groups.
fn iommu(groups: usize) -> Check {
    if groups > 0 {
        Check::pass("iommu", format!("on ({groups} IOMMU groups)"))
    } else {
        Check::fail(
            "iommu",
            "off: no IOMMU groups in /sys/kernel/iommu_groups",
            "enable VT-d / AMD-Vi in firmware and boot with intel_iommu=on or amd_iommu=on (plus iommu=pt)",
        )
    }
}

/// `gpu <address>`: one per GPU, its IOMMU group and driver; `gpu` when there is none.
fn gpus(inventory: &Inventory) -> Vec<Check> {
    if inventory.gpus.is_empty() {
        return vec![Check::warn(
            "gpu",
            "no GPU found on the PCI bus",
            "nothing to pass through on this host",
        )];
    }
    inventory.gpus.iter().map(gpu).collect()
}

fn gpu(g: &Gpu) -> Check {
    let name = format!("gpu {}", g.address);
    let id = format!("{}:{}", g.vendor, g.device);
    match (g.iommu_group, g.driver.as_deref()) {
        (None, _) => Check::fail(
            name,
            format!("{id} has no IOMMU group"),
            "turn the IOMMU on; a device without a group cannot be passed through",
        ),
        (Some(group), Some("vfio-pci")) => Check::pass(name, format!("{id} bound to vfio-pci, IOMMU group {group}")),
        (Some(group), driver) => Check::warn(
            name,
            format!("{id} bound to {}, IOMMU group {group}", driver.unwrap_or("no driver")),
            "bind it to vfio-pci (libvirt's managed='yes' does so at VM start; KubeVirt needs it bound beforehand)",
        ),
    }
}

/// `hbm <region>`: one per region discovery found, its health and dax mode; `hbm` when none.
fn hbm_regions(inventory: &Inventory, dax: &[DaxFact]) -> Vec<Check> {
    if inventory.regions.is_empty() {
        return vec![Check::fail(
            "hbm",
            "no HBM regions found",
            "check `hbm-hook discover`; if firmware does not describe the HBM, map GPUs to NUMA nodes or dax devices in the config's discovery.gpus",
        )];
    }
    inventory.regions.iter().map(|r| hbm_region(r, dax)).collect()
}

fn hbm_region(r: &Region, dax: &[DaxFact]) -> Check {
    let name = format!("hbm {}", r.id);
    let node = r
        .host_node
        .map_or("no host node".to_string(), |n| format!("host node {n}"));
    let kind = match r.memmap {
        Memmap::Spm => "SPM",
        Memmap::Normal => "normal RAM",
    };
    let dax_path = r.dax.as_deref().map(|d| format!(", {d}")).unwrap_or_default();
    let detail = format!(
        "{} on {node} ({kind}, from {}{dax_path})",
        gib(r.size_bytes),
        r.source.as_str()
    );
    // Memory reachable only through its dax device needs that device in devdax mode, else
    // /dev/daxX.Y does not exist and the adapter refuses the domain.
    let dax_driver = r.dax.as_deref().filter(|_| !r.online).map(|path| {
        let dev = path.rsplit('/').next().unwrap_or(path);
        let driver = dax.iter().find(|d| d.name == dev).and_then(|d| d.driver.clone());
        (dev, driver)
    });
    match (r.health, dax_driver) {
        (Health::Healthy, Some((dev, driver))) if driver.as_deref() != Some("device_dax") => Check::fail(
            name,
            format!(
                "{detail}: {dev} is not in devdax mode (driver {})",
                driver.as_deref().unwrap_or("none")
            ),
            format!("`daxctl reconfigure-device --mode=devdax {dev}`; VMs get this memory through /dev/{dev}"),
        ),
        (Health::Healthy, _) => Check::pass(name, detail),
        (Health::Unhealthy, _) => Check::fail(
            name,
            format!(
                "{detail}: unhealthy: {}",
                r.reason.as_deref().unwrap_or("no reason given")
            ),
            "fix what the reason names; an unhealthy region is not offered to VMs",
        ),
    }
}

/// `kubevirt <region>`: whether KubeVirt's virt-launcher can back a guest cell with the region.
/// It runs QEMU without the argv adapter and as uid 107, so only memory online in a host node
/// (bound with `<numatune><memnode mode='strict'>`) works; a devdax region needs reconfiguring.
fn kubevirt_region(r: &Region) -> Check {
    let name = format!("kubevirt {}", r.id);
    match (r.online, r.host_node, r.dax.as_deref()) {
        (true, Some(node), _) => Check::pass(
            name,
            format!(
                "usable: online in host node {node}; virt-launcher binds the guest cell there (numatune memnode strict)"
            ),
        ),
        (false, _, Some(path)) => {
            let dev = path.rsplit('/').next().unwrap_or(path);
            Check::warn(
                name,
                format!(
                    "not usable: reachable only through {path}, which virt-launcher's QEMU (no argv adapter, uid 107) cannot use"
                ),
                format!(
                    "`daxctl reconfigure-device --mode=system-ram {dev}` (onlines it as movable memory of its NUMA node; libvirt hosts keep working, binding by node)"
                ),
            )
        }
        _ => Check::warn(
            name,
            "not usable: the memory is not online in a host NUMA node",
            "bring the region's NUMA node online (see the hbm check's reason)",
        ),
    }
}

/// `discovery`: one warning per file discovery skipped or guessed around.
fn discovery_warnings(inventory: &Inventory) -> Vec<Check> {
    inventory
        .warnings
        .iter()
        .map(|w| {
            Check::warn(
                "discovery",
                w.clone(),
                "check the file named; discovery skipped or guessed around it",
            )
        })
        .collect()
}

/// `dax <name>`: the device's mode (devdax or system-ram) or that it is unbound.
fn dax_device(d: &DaxFact) -> Check {
    let name = format!("dax {}", d.name);
    let size = d.size_bytes.map(gib).unwrap_or_else(|| "unknown size".into());
    let node = d.target_node.map(|n| format!(", target node {n}")).unwrap_or_default();
    match d.driver.as_deref() {
        Some("device_dax") => Check::pass(name, format!("devdax (/dev/{}), {size}{node}", d.name)),
        Some("kmem") => Check::pass(
            name,
            format!("system-ram (kmem: onlined into its NUMA node), {size}{node}"),
        ),
        other => Check::warn(
            name,
            format!("{size}{node}, driver {}", other.unwrap_or("none")),
            format!(
                "bind it: `daxctl reconfigure-device --mode=devdax {}` (or --mode=system-ram)",
                d.name
            ),
        ),
    }
}

/// `qemu`, and when it answered the probe `qemu generic-initiator` and `qemu spm-dialect`.
fn qemu(f: &HostFacts) -> Vec<Check> {
    let qemu = f.qemu_path.display();
    match &f.qemu {
        // Neither QEMU nor libvirt on the host is a KubeVirt node (both live in virt-launcher);
        // a libvirt host without its QEMU cannot start anything.
        Err(why) if f.libvirt_version == Looked::Missing => vec![Check::warn(
            "qemu",
            format!("{qemu}: {why}"),
            "fine on KubeVirt nodes (QEMU runs in virt-launcher); on a libvirt host install QEMU >= 9.0 (Debian 12: qemu-system-x86 from bookworm-backports) or set qemu.emulator",
        )],
        Err(why) => vec![Check::fail(
            "qemu",
            format!("{qemu}: {why}"),
            "install QEMU >= 9.0 (Debian 12: qemu-system-x86 from bookworm-backports) or set qemu.emulator",
        )],
        Ok(caps) => vec![
            Check::pass("qemu", format!("{qemu}: QEMU {}", caps.version)),
            qemu_generic_initiator(caps),
            qemu_spm_dialect(caps),
        ],
    }
}

fn qemu_generic_initiator(caps: &Capabilities) -> Check {
    if caps.acpi_generic_initiator {
        Check::pass("qemu generic-initiator", "acpi-generic-initiator available")
    } else {
        Check::fail(
            "qemu generic-initiator",
            "no acpi-generic-initiator (QEMU < 9.0): guests cannot tie the GPU to its HBM node",
            "install QEMU >= 9.0 (Debian 12: bookworm-backports)",
        )
    }
}

fn qemu_spm_dialect(caps: &Capabilities) -> Check {
    if caps.memmap_type || caps.sp_mem {
        Check::pass("qemu spm-dialect", format!("speaks {}", caps.dialects()))
    } else {
        Check::warn(
            "qemu spm-dialect",
            "speaks neither memmap-type nor sp-mem",
            "use the kernel-cmdline dialect (direct kernel boot) or none; a QEMU with the SPM series adds the others",
        )
    }
}

/// `libvirt`: the daemon's version.
fn libvirt(version: &Looked<String>) -> Check {
    match version {
        Looked::Found(v) => Check::pass("libvirt", format!("libvirt {v}")),
        Looked::Cut(why) => Check::fail(
            "libvirt",
            why.clone(),
            "check that --libvirtd names the libvirt daemon: `libvirtd --version` must print its version and exit",
        ),
        Looked::Missing => Check::warn(
            "libvirt",
            "no libvirt daemon found",
            "install libvirt-daemon-driver-qemu on plain libvirt hosts (KubeVirt nodes run libvirt inside virt-launcher)",
        ),
    }
}

/// `libvirt acpi-nodeset`: whether libvirt writes the Generic Initiator itself.
fn libvirt_acpi_nodeset(native: &Looked<bool>) -> Check {
    match native {
        Looked::Found(true) => Check::pass(
            "libvirt acpi-nodeset",
            "native <acpi nodeset> available (rewrite.native_generic_initiator: true may use it)",
        ),
        Looked::Found(false) => Check::pass(
            "libvirt acpi-nodeset",
            "no native <acpi nodeset>: the rewriter adds the Generic Initiator through <qemu:commandline>",
        ),
        Looked::Cut(why) => Check::warn(
            "libvirt acpi-nodeset",
            format!("libvirt's domain schema {why}"),
            "pass --libvirt-schema libvirt's domaincommon.rng (/usr/share/libvirt/schemas)",
        ),
        Looked::Missing => Check::warn(
            "libvirt acpi-nodeset",
            "libvirt's domain schema not found",
            "install libvirt0 (it ships /usr/share/libvirt/schemas; pass --libvirt-schema for another path)",
        ),
    }
}

/// `hook` / `adapter`: an installed executable; `why` says who needs it when it is missing.
fn installed(name: &str, path: &Path, state: &Installed, why: &str) -> Check {
    let path = path.display();
    match state {
        Installed::Executable { target } => Check::pass(name, format!("{path} -> {}", target.display())),
        Installed::NotExecutable => Check::fail(
            name,
            format!("{path} is not executable"),
            "run deploy/libvirt/install.sh again",
        ),
        Installed::Missing => Check::warn(
            name,
            format!("{path} not installed"),
            format!("{why}: run deploy/libvirt/install.sh"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::{failed, render_text};

    #[test]
    fn kubevirt_usability_per_region_kind() {
        let gpu = topology::PciAddress::parse("0000:c1:00.0").unwrap_or(topology::PciAddress::new(0, 0, 0, 0));
        let online = topology::fixture::region(gpu, 2, 1 << 30);
        let devdax = Region {
            id: "0000:c1:00.0/dax3.0".into(),
            dax: Some("/dev/dax3.0".into()),
            online: false,
            ..online.clone()
        };
        let offline = Region {
            online: false,
            ..online.clone()
        };
        let rows: Vec<(Status, String, Option<String>)> = [online, devdax, offline]
            .iter()
            .map(kubevirt_region)
            .map(|c| (c.status, format!("{}: {}", c.check, c.detail), c.fix))
            .collect();
        assert_eq!(
            rows,
            [
                (
                    Status::Pass,
                    "kubevirt 0000:c1:00.0/node2: usable: online in host node 2; virt-launcher binds the guest cell there (numatune memnode strict)".to_string(),
                    None
                ),
                (
                    Status::Warn,
                    "kubevirt 0000:c1:00.0/dax3.0: not usable: reachable only through /dev/dax3.0, which virt-launcher's QEMU (no argv adapter, uid 107) cannot use".to_string(),
                    Some("`daxctl reconfigure-device --mode=system-ram dax3.0` (onlines it as movable memory of its NUMA node; libvirt hosts keep working, binding by node)".to_string())
                ),
                (
                    Status::Warn,
                    "kubevirt 0000:c1:00.0/node2: not usable: the memory is not online in a host NUMA node".to_string(),
                    Some("bring the region's NUMA node online (see the hbm check's reason)".to_string())
                ),
            ]
        );
    }

    #[test]
    fn empty_host_fails_iommu_and_hbm() {
        let facts = HostFacts {
            iommu_groups: 0,
            inventory: Inventory::empty("/x"),
            dax: vec![],
            qemu_path: "/q".into(),
            qemu: Err("gone".into()),
            libvirt_version: Looked::Missing,
            libvirt_acpi_nodeset: Looked::Missing,
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
            libvirt_version: Looked::Found("9.0.0".into()),
            ..facts
        };
        let qemu = evaluate(&libvirt_host).into_iter().find(|c| c.check == "qemu").unwrap();
        assert_eq!(qemu.status, Status::Fail);
    }
}
