//! Reading the host for the doctor: the inventory ([`crate::inventory`]), IOMMU groups, dax
//! devices, the QEMU probe, the libvirt daemon and its schema, the installed hook and adapter.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use topology::Inventory;

use super::bounded::{self, Bounds};
use super::cli::{DoctorArgs, DoctorError};
use crate::inventory::{self, InventoryArgs};
use crate::qemu::probe::{self, Capabilities};

/// A dax device as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaxFact {
    pub name: String,
    /// `device_dax` (devdax), `kmem` (system-ram), `None` when unbound.
    pub driver: Option<String>,
    pub size_bytes: Option<u64>,
    pub target_node: Option<u32>,
}

/// Bound on `libvirtd --version`: the probe's time limit, 64 KiB of output.
pub const LIBVIRTD_BOUNDS: Bounds = Bounds {
    time: probe::PROBE_TIMEOUT,
    bytes: 64 << 10,
};
/// Bound on reading libvirt's domain schema (222 KiB in libvirt 9.0): the probe's time
/// limit, 16 MiB.
pub const SCHEMA_BOUNDS: Bounds = Bounds {
    time: probe::PROBE_TIMEOUT,
    bytes: 16 << 20,
};

/// What a bounded look at a program or file found: nothing usable there, an answer, or a look
/// cut short at a bound (the whole sentence saying which and why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Looked<T> {
    Missing,
    Found(T),
    Cut(String),
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
    /// `9.0.0`; `Missing` when no libvirt daemon is installed.
    pub libvirt_version: Looked<String>,
    /// Whether libvirt's domain schema allows `<acpi nodeset=..>`; `Missing` when the schema is
    /// absent.
    pub libvirt_acpi_nodeset: Looked<bool>,
    pub hook_path: PathBuf,
    pub hook: Installed,
    pub adapter_path: PathBuf,
    pub adapter: Installed,
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

/// The daemon's version from `libvirtd --version` ("libvirtd (libvirt) 9.0.0"), bounded.
fn libvirt_version(libvirtd: &Path) -> Looked<String> {
    match bounded::program_output(libvirtd, &["--version"], LIBVIRTD_BOUNDS) {
        Err(cut) => Looked::Cut(format!("`{} --version` {cut} (killed)", libvirtd.display())),
        Ok(None) => Looked::Missing,
        Ok(Some(out)) => String::from_utf8_lossy(&out)
            .split_whitespace()
            .last()
            .map_or(Looked::Missing, |version| Looked::Found(version.to_string())),
    }
}

/// Whether the schema at `schema` allows `<acpi nodeset=..>`, read within [`SCHEMA_BOUNDS`].
fn libvirt_acpi_nodeset(schema: &Path) -> Looked<bool> {
    match bounded::file_contents(schema, SCHEMA_BOUNDS) {
        Err(cut) => Looked::Cut(format!("{} {cut} (not read)", schema.display())),
        Ok(bytes) => bytes
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .map_or(Looked::Missing, |rng| Looked::Found(schema_has_acpi_nodeset(&rng))),
    }
}

/// Number of IOMMU groups the kernel made under `root`.
fn iommu_group_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("sys/kernel/iommu_groups"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

/// The dax devices sysfs under `root` shows.
fn dax_facts(root: &Path) -> Vec<DaxFact> {
    topology::dax::scan(&topology::sysfs::Sysfs::new(root))
        .devices
        .into_iter()
        .map(|d| DaxFact {
            size_bytes: d.size.as_ref().ok().copied(),
            name: d.name,
            driver: d.driver,
            target_node: d.target_node,
        })
        .collect()
}

/// Reads the host.
pub fn gather(args: &DoctorArgs) -> Result<HostFacts, DoctorError> {
    let inventory_args = InventoryArgs {
        sysfs_root: args.sysfs_root.clone(),
        topology: None,
        config: args.config.clone(),
    };
    let config = inventory_args.load_config()?;
    let root = &inventory::sysfs_root(args.sysfs_root.as_deref(), &config);
    let inventory = inventory::resolve(&inventory_args, &config)?;
    let iommu_groups = iommu_group_count(root);
    let dax = dax_facts(root);
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
        libvirt_acpi_nodeset: libvirt_acpi_nodeset(&args.libvirt_schema),
        hook: installed(&args.hook),
        hook_path: args.hook.clone(),
        adapter: installed(&adapter_path),
        adapter_path,
    })
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
}
