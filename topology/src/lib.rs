//! Host HBM discovery: which GPUs have HBM that firmware exposes as its own NUMA proximity
//! domain, how big it is, and which host NUMA node / device-dax device holds it.
//!
//! Pure over its input: every function takes a sysfs/procfs root (`/` on a real host, a fixture
//! tree in tests) and returns values or typed errors. No async, no global state.
//!
//! Where to start: [`discover`] (below) scans a root and returns an [`Inventory`] (`model`);
//! `merge` decides which GPU owns which region. Module map:
//! - `sysfs`: the one reader of files under the root (regular files only, bounded reads).
//! - `pci`: PCI functions, which are GPUs, their driver, IOMMU group and NUMA node.
//! - `node`: NUMA nodes (online, CPUs, memory, distances, generic initiators).
//! - `dax`: device-dax instances and where their memory comes from.
//! - `nvidia`: the NVIDIA driver's `numa_status` per GPU.
//! - `srat`: the ACPI SRAT and the kernel's PXM -> node numbering.
//! - `iomem`, `memmap`: Soft Reserved ranges from `/proc/iomem` and `sys/firmware/memmap`.
//! - `config`: the `discovery` section of the config files (manual GPU -> node/dax mappings).
//! - `merge`: the precedence config > nvidia > dax > cpuless-node > srat, and region health.
//! - `model`: the discovery JSON contract (`Inventory`, `Gpu`, `Region`, `NumaNode`).
//! - `report`: the human table ([`render_table`]).
//! - `validate`: checks a `discover --json` document read back ([`Inventory::from_json`]).
//! - `pci_address`: `DDDD:BB:DD.F` parsing and printing ([`PciAddress`]).
//! - `cli` (feature `cli`): the `discover` subcommand shared by `hbm-hook` and the plugin.
//! - `fixture` (feature `fixture`): synthetic hosts for tests, benches and the sample host.

use std::path::{Path, PathBuf};

pub mod config;
pub mod dax;
pub mod iomem;
pub mod memmap;
mod merge;
pub mod model;
pub mod node;
pub mod nvidia;
pub mod pci;
mod pci_address;
pub mod report;
pub mod srat;
pub mod sysfs;
pub mod validate;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "fixture")]
pub mod fixture;

pub use config::{ConfigError, DiscoveryConfig, GpuMapping};
pub use model::{Gpu, Health, Inventory, Memmap, NumaNode, Region, SCHEMA_VERSION, Source};
pub use pci_address::{PciAddress, PciAddressError};
pub use report::render_table;
pub use validate::InventoryError;

/// Root-relative path of the SRAT image.
const SRAT: &str = "sys/firmware/acpi/tables/SRAT";

/// Why discovery could not run at all (everything else ends up in the inventory).
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The root is not a directory holding `sys/`: a wrong `--sysfs-root` (exit 2).
    #[error(
        "sysfs root {root} is unusable: {why}; pass --sysfs-root DIR naming a directory that holds sys/ (and proc/)"
    )]
    RootUnusable { root: String, why: String },
    /// A folder every scan needs could not be read right now (too many open files, I/O error):
    /// the host's fault, often transient, not the root's (exit 1).
    #[error("cannot read {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
}

impl DiscoverError {
    /// The process exit status: 2 for a wrong root, 1 for a read failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            DiscoverError::RootUnusable { .. } => 2,
            DiscoverError::Unreadable { .. } => 1,
        }
    }
}

fn check_root(root: &Path) -> Result<(), DiscoverError> {
    let err = |why: String| DiscoverError::RootUnusable {
        root: root.display().to_string(),
        why,
    };
    let meta = match std::fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) if is_wrong_path(&e) => return Err(err(format!("cannot stat it ({e})"))),
        Err(source) => {
            return Err(DiscoverError::Unreadable {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    let sys = root.join("sys");
    match std::fs::read_dir(&sys) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(err("it has no sys/ folder".into())),
        Err(e) if is_wrong_path(&e) => Err(err(format!("{} is unreadable ({e})", sys.display()))),
        Err(source) => Err(DiscoverError::Unreadable { path: sys, source }),
    }
}

/// Whether an error opening a path says the path itself is wrong (rather than the host being
/// short of something, like file descriptors).
fn is_wrong_path(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::PermissionDenied
    )
}

/// Scans the sysfs/procfs tree at `root` and returns the host's GPUs, HBM regions and NUMA
/// nodes. Fails only when `root` itself is unusable (missing, not a directory, no `sys/`) or
/// `sys/bus/pci/devices` cannot be listed right now (a scan without it would report every GPU
/// gone); odd or broken files become skipped regions, unhealthy regions (with a reason naming
/// the file) or [`Inventory::warnings`].
pub fn discover(root: &Path, config: &DiscoveryConfig) -> Result<Inventory, DiscoverError> {
    check_root(root)?;
    let fs = sysfs::Sysfs::new(root);
    let mut warnings = Vec::new();
    let configured: Vec<PciAddress> = config.gpus.iter().map(|m| m.gpu).collect();
    let pci = pci::scan(&fs, &configured).map_err(|e| match e {
        sysfs::SysfsError::Unreadable { path, source } => DiscoverError::Unreadable { path, source },
        other => DiscoverError::Unreadable {
            path: other.path().to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    let nodes = node::scan(&fs);
    let dax = dax::scan(&fs);
    let nvidia = nvidia::scan(&fs);
    let srat = read_srat(&fs, &mut warnings);
    let iomem = iomem::scan(&fs, &mut warnings);
    let memmap = memmap::scan(&fs, &mut warnings);
    for w in [&pci.warnings, &nodes.warnings, &dax.warnings, &nvidia.warnings] {
        warnings.extend(w.iter().cloned());
    }
    let initiator_devices = merge::initiator_devices(&fs, &pci, srat.as_ref());
    let facts = merge::Facts {
        pci,
        nodes,
        dax,
        nvidia,
        srat,
        iomem,
        memmap,
        initiator_devices,
    };
    let regions = merge::regions(&fs, config, &facts, &mut warnings);
    let gpus = inventory_gpus(&facts);
    let nodes = inventory_nodes(&facts.nodes);
    tracing::debug!(root = %root.display(), regions = regions.len(), "discovery done");
    Ok(Inventory {
        schema_version: SCHEMA_VERSION,
        root: root.display().to_string(),
        gpus,
        regions,
        nodes,
        warnings,
    })
}

/// The SRAT under `fs`'s root, `None` when absent (root-only, masked in containers: normal) or
/// broken (a warning is pushed).
pub fn read_srat(fs: &sysfs::Sysfs, warnings: &mut Vec<String>) -> Option<srat::Srat> {
    match fs.read_bytes(SRAT) {
        Ok(bytes) => match srat::parse(&bytes) {
            Ok(table) => Some(table),
            Err(e) => {
                warnings.push(format!("{}: {e}; SRAT ignored", fs.path(SRAT).display()));
                None
            }
        },
        Err(e) if e.is_missing() => None,
        Err(e) => {
            warnings.push(format!("{e}; SRAT ignored"));
            None
        }
    }
}

/// The inventory's `gpus[]`.
fn inventory_gpus(facts: &merge::Facts) -> Vec<Gpu> {
    facts
        .pci
        .gpus
        .iter()
        .map(|g| Gpu {
            address: g.address,
            vendor: g.vendor.clone(),
            device: g.device.clone(),
            class: g.class.clone(),
            driver: g.driver.clone(),
            iommu_group: g.iommu_group,
            numa_node: g.numa_node,
            cpu_node: merge::gpu_cpu_node(&facts.nodes, g),
            peer_group: None,
        })
        .collect()
}

/// The inventory's `nodes[]`.
fn inventory_nodes(table: &node::NodeTable) -> Vec<NumaNode> {
    table
        .nodes
        .values()
        .map(|n| NumaNode {
            id: n.id,
            cpus: n.cpulist.clone(),
            mem_total_bytes: n.mem_total_bytes.unwrap_or(0),
            online: table.is_online(n.id),
            generic_initiator: table.has_generic_initiator.binary_search(&n.id).is_ok(),
            distances: n.distances.clone(),
        })
        .collect()
}
