//! The discovery result: `Inventory` and its parts. This is the `discover --json` contract that
//! other commands read back (`hbm-hook rewrite --topology FILE`), so field names and meanings are
//! stable; new optional fields may be added, existing ones are never renamed or repurposed.
//! README.md ("Discovery JSON") documents every field.

use serde::{Deserialize, Serialize};

use crate::PciAddress;

/// Version of the JSON document layout. Bumped only on an incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything discovery found on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Always [`SCHEMA_VERSION`] when produced by this build.
    pub schema_version: u32,
    /// The sysfs/procfs root the scan read (`/` on a real host).
    pub root: String,
    /// GPUs (display/3D/processing-accelerator PCI functions) seen on the host, sorted by address.
    pub gpus: Vec<Gpu>,
    /// HBM regions, each owned by one GPU; sorted by (gpu, host_node, id).
    pub regions: Vec<Region>,
    /// Online and memory-only NUMA nodes the scan read, sorted by id.
    pub nodes: Vec<NumaNode>,
    /// Odd inputs noticed during the scan (unreadable file, garbage number, ...), each naming the file.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One GPU-like PCI function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// PCI address, e.g. `0000:c1:00.0`.
    pub address: PciAddress,
    /// PCI vendor id as 4 lowercase hex digits without `0x`, e.g. `1002`.
    pub vendor: String,
    /// PCI device id, e.g. `74a1`.
    pub device: String,
    /// PCI class code, 6 hex digits, e.g. `038000`.
    pub class: String,
    /// Bound kernel driver (`vfio-pci`, `amdgpu`, `nvidia`), `null` when unbound.
    pub driver: Option<String>,
    /// IOMMU group number, `null` when the IOMMU is off.
    pub iommu_group: Option<u32>,
    /// The device's `numa_node` (the proximity domain firmware gave it), `null` for -1/absent.
    pub numa_node: Option<u32>,
    /// Nearest NUMA node that has CPUs (for kubelet topology hints), `null` when unknown.
    pub cpu_node: Option<u32>,
    /// Peer group (xGMI hive / NVLink domain) when sysfs shows one.
    #[serde(default)]
    pub peer_group: Option<String>,
}

/// Where a region was learned from. Precedence when sources disagree: the order of the variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Config,
    Nvidia,
    Dax,
    CpulessNode,
    Srat,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Nvidia => "nvidia",
            Source::Dax => "dax",
            Source::CpulessNode => "cpuless-node",
            Source::Srat => "srat",
        }
    }
}

/// How firmware typed the range: Specific Purpose Memory (E820 0xEFFFFFFF, "Soft Reserved") or
/// ordinary RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Memmap {
    Spm,
    Normal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// One HBM region: a host NUMA node (or dax device) holding memory that belongs to `gpu`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Stable id, unique on the host: `<gpu address>/node<N>` or `<gpu address>/<daxX.Y>`.
    pub id: String,
    /// Owning GPU.
    pub gpu: PciAddress,
    /// Host NUMA node holding the memory (`null` only when a config entry names a dax device
    /// whose node is unknown).
    pub host_node: Option<u32>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Which source won for this region.
    pub source: Source,
    /// Firmware memory type of the range.
    pub memmap: Memmap,
    /// Device-dax character device (`/dev/dax0.0`) when the memory is reachable that way.
    pub dax: Option<String>,
    /// Mapping alignment of the dax device in bytes (`align`), when known.
    #[serde(default)]
    pub dax_align: Option<u64>,
    /// Host physical start address, when a source reported one.
    #[serde(default)]
    pub base: Option<u64>,
    /// Whether the memory is online in its NUMA node (usable by a memory backend bound with
    /// `host-nodes`); `false` for memory only reachable through a dax device.
    pub online: bool,
    /// Nearest NUMA node with CPUs, `null` when unknown.
    pub cpu_node: Option<u32>,
    pub health: Health,
    /// Why the region is unhealthy (names the file or condition); `null` when healthy.
    pub reason: Option<String>,
}

/// One NUMA node as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    pub id: u32,
    /// CPUs in cpulist form (`0-3,8`), empty for a CPU-less node.
    pub cpus: String,
    /// `MemTotal` from `nodeN/meminfo`, in bytes.
    pub mem_total_bytes: u64,
    pub online: bool,
    /// Listed in `has_generic_initiator`.
    pub generic_initiator: bool,
    /// `nodeN/distance`, indexed by position in `online`'s order as the kernel prints it.
    #[serde(default)]
    pub distances: Vec<u32>,
}

impl Inventory {
    /// An inventory with nothing in it, for `root`.
    pub fn empty(root: impl Into<String>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            root: root.into(),
            gpus: Vec::new(),
            regions: Vec::new(),
            nodes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Regions owned by `gpu`, in document order.
    pub fn regions_of(&self, gpu: PciAddress) -> impl Iterator<Item = &Region> {
        self.regions.iter().filter(move |r| r.gpu == gpu)
    }

    pub fn gpu(&self, address: PciAddress) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.address == address)
    }

    /// Parses a `discover --json` document and checks it fully ([`crate::validate::check`]):
    /// schema version, unique GPU addresses and region ids, hex ids, `dax` a `/dev/daxN.M` path,
    /// `dax_align` a power of two, a healthy region's size > 0 and GPU present.
    pub fn from_json(text: &str) -> Result<Self, crate::validate::InventoryError> {
        let inventory: Self = serde_json::from_str(text)?;
        crate::validate::check(&inventory)?;
        Ok(inventory)
    }

    /// The `discover --json` document (pretty-printed, trailing newline).
    pub fn to_json(&self) -> String {
        // Serializing these plain types cannot fail (no maps with non-string keys, no floats).
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}
