//! `verify-guest`: run inside a VM, does each GPU find its HBM the way bare metal shows it?
//!
//! The guest is read with the same discovery as a host ([`topology::discover`]), so the guest's
//! view comes out as a host inventory does: each GPU-class PCI function with its `numa_node`, the
//! regions that node holds (dax/`hmem` devices, soft-reserved or ordinary memory of a CPU-less
//! node, SRAT ranges) and the node's state. [`verify`] then judges each GPU with one function
//! per check; every failure says what the host side must change. [`cli`] is the command.
//!
//! The HBM size reported for a GPU is what the guest's firmware describes for its node: the
//! enabled SRAT memory ranges of that node (the `dev -> numa_node -> SRAT -> range` walk a guest
//! driver does); only without an SRAT is it the discovered regions' total. Whether the guest
//! kernel could also use the range as memory (a dax device, memory onlined) is a host-side
//! concern: it is reported as a note, never as a failure.

pub mod cli;
mod report;

use serde::Serialize;
use topology::srat::Srat;
use topology::{Gpu, Health, Inventory, Memmap, NumaNode, Region};

pub use report::render_text;

/// One check that failed for a GPU, and what the host must change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Which check: `numa-node`, `node-present`, `node-online`, `cpu-less`, `hbm`.
    pub check: &'static str,
    /// What the guest shows.
    pub message: String,
    /// What to change on the host.
    pub host_fix: String,
}

/// One HBM range the guest sees for a GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HbmRange {
    pub region: String,
    pub size_bytes: u64,
    pub memmap: Memmap,
    /// Guest-physical start, when a source reported it.
    pub base: Option<u64>,
    /// The device-dax node (`/dev/dax0.0`) the range is reachable through, if any.
    pub dax: Option<String>,
    /// Which discovery source found it (`dax`, `cpuless-node`, `srat`, ...).
    pub source: &'static str,
}

/// One enabled SRAT memory affinity range of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FirmwareRange {
    pub base: u64,
    pub length: u64,
}

/// The node a GPU's `numa_node` names, as the guest shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub id: u32,
    pub online: bool,
    pub cpu_less: bool,
    /// Listed in `has_generic_initiator`: an ACPI Generic Initiator keeps it online.
    pub generic_initiator: bool,
    pub mem_total_bytes: u64,
    /// The node's enabled SRAT memory ranges (empty without an SRAT).
    pub srat_ranges: Vec<FirmwareRange>,
}

/// The verdict for one GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GpuVerdict {
    pub address: String,
    pub class: String,
    pub numa_node: Option<u32>,
    pub node: Option<NodeView>,
    pub hbm: Vec<HbmRange>,
    /// The node's SRAT ranges in bytes, or (without an SRAT) the regions' total.
    pub hbm_bytes: u64,
    /// `spm` or `normal` when every range agrees, `mixed` otherwise, `null` without ranges.
    pub marking: Option<&'static str>,
    pub problems: Vec<Problem>,
    /// What the guest shows that is no failure (e.g. a range the guest kernel cannot use as
    /// memory: the GPU driver claims soft-reserved ranges itself).
    pub notes: Vec<String>,
    pub ok: bool,
}

/// The verdict for the whole guest: `ok` when at least one GPU is present and each has its HBM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestReport {
    pub gpus: Vec<GpuVerdict>,
    pub ok: bool,
}

const GI_FIX: &str = "on the host: use QEMU >= 9.0 and the rewriter's Generic Initiator for this device \
(acpi-generic-initiator or libvirt's <acpi nodeset>), with the device behind a pcie-expander-bus whose <node> is the HBM cell";

/// Judges every GPU of a guest inventory, with the guest's SRAT when it has one.
pub fn verify(inventory: &Inventory, srat: Option<&Srat>) -> GuestReport {
    let gpus: Vec<GpuVerdict> = inventory
        .gpus
        .iter()
        .map(|gpu| verify_gpu(inventory, srat, gpu))
        .collect();
    let ok = !gpus.is_empty() && gpus.iter().all(|g| g.ok);
    GuestReport { gpus, ok }
}

fn verify_gpu(inventory: &Inventory, srat: Option<&Srat>, gpu: &Gpu) -> GpuVerdict {
    let node = gpu
        .numa_node
        .and_then(|id| inventory.nodes.iter().find(|n| n.id == id))
        .map(|n| node_view(n, srat));
    let regions: Vec<&Region> = inventory.regions_of(gpu.address).collect();
    let hbm: Vec<HbmRange> = regions.iter().map(|r| hbm_range(r)).collect();
    let mut problems = Vec::new();
    problems.extend(check_numa_node(gpu));
    problems.extend(check_node_present(gpu, node.as_ref()));
    problems.extend(node.as_ref().and_then(check_node_online));
    problems.extend(node.as_ref().and_then(check_cpu_less));
    problems.extend(check_hbm(gpu, &hbm));
    GpuVerdict {
        address: gpu.address.to_string(),
        class: gpu.class.clone(),
        numa_node: gpu.numa_node,
        hbm_bytes: hbm_bytes(node.as_ref(), &hbm),
        marking: marking(&hbm),
        notes: regions.iter().filter_map(|r| health_note(r)).collect(),
        ok: problems.is_empty(),
        node,
        hbm,
        problems,
    }
}

fn node_view(node: &NumaNode, srat: Option<&Srat>) -> NodeView {
    let srat_ranges = srat
        .map(|table| {
            table
                .memory_of_node(node.id)
                .map(|m| FirmwareRange {
                    base: m.base,
                    length: m.length,
                })
                .collect()
        })
        .unwrap_or_default();
    NodeView {
        id: node.id,
        online: node.online,
        cpu_less: node.cpus.trim().is_empty(),
        generic_initiator: node.generic_initiator,
        mem_total_bytes: node.mem_total_bytes,
        srat_ranges,
    }
}

/// What the firmware gives the node (its SRAT ranges) when the guest has an SRAT and any range
/// was found for the GPU; the discovered regions' total otherwise.
fn hbm_bytes(node: Option<&NodeView>, hbm: &[HbmRange]) -> u64 {
    let regions_total = hbm.iter().map(|r| r.size_bytes).fold(0, u64::saturating_add);
    match node {
        Some(view) if !view.srat_ranges.is_empty() && !hbm.is_empty() => {
            view.srat_ranges.iter().map(|r| r.length).fold(0, u64::saturating_add)
        }
        _ => regions_total,
    }
}

fn hbm_range(region: &Region) -> HbmRange {
    HbmRange {
        region: region.id.clone(),
        size_bytes: region.size_bytes,
        memmap: region.memmap,
        base: region.base,
        dax: region.dax.clone(),
        source: region.source.as_str(),
    }
}

fn marking(hbm: &[HbmRange]) -> Option<&'static str> {
    let first = hbm.first()?.memmap;
    if hbm.iter().any(|r| r.memmap != first) {
        return Some("mixed");
    }
    Some(match first {
        Memmap::Spm => "spm",
        Memmap::Normal => "normal",
    })
}

/// `numa_node` -1: Linux found no proximity domain for the device (no `_PXM`, or one naming a
/// node that stayed offline).
fn check_numa_node(gpu: &Gpu) -> Option<Problem> {
    gpu.numa_node.is_none().then(|| Problem {
        check: "numa-node",
        message:
            "numa_node is -1: the guest has no Generic Initiator for this device (or no _PXM naming an online node)"
                .to_string(),
        host_fix: GI_FIX.to_string(),
    })
}

fn check_node_present(gpu: &Gpu, node: Option<&NodeView>) -> Option<Problem> {
    let id = gpu.numa_node?;
    node.is_none().then(|| Problem {
        check: "node-present",
        message: format!("numa_node is {id}, but the guest shows no node {id}"),
        host_fix: "on the host: the expander's <node> must name a guest NUMA cell that exists".to_string(),
    })
}

fn check_node_online(node: &NodeView) -> Option<Problem> {
    (!node.online).then(|| Problem {
        check: "node-online",
        message: format!("node {} is offline", node.id),
        host_fix: format!(
            "a CPU-less node whose memory is all soft reserved is online only with a Generic Initiator; {GI_FIX}"
        ),
    })
}

fn check_cpu_less(node: &NodeView) -> Option<Problem> {
    (!node.cpu_less).then(|| Problem {
        check: "cpu-less",
        message: format!("node {} has CPUs: the device sits on a CPU node, not on its HBM cell", node.id),
        host_fix: "on the host: put the GPU behind a pcie-expander-bus whose <node> is its CPU-less HBM cell (hbm-hook rewrite)"
            .to_string(),
    })
}

fn check_hbm(gpu: &Gpu, hbm: &[HbmRange]) -> Option<Problem> {
    let id = gpu.numa_node?;
    hbm.is_empty().then(|| Problem {
        check: "hbm",
        message: format!("node {id} holds no HBM for the device (no dax device, soft-reserved range or memory on it)"),
        host_fix: "on the host: give the domain the HBM cell for this GPU (hbm-hook rewrite adds it from the host's inventory)"
            .to_string(),
    })
}

/// A range discovery marks unhealthy (e.g. soft reserved with no dax device to reach it): the
/// GPU driver still finds it through the SRAT, so this is a note, not a failure.
fn health_note(region: &Region) -> Option<String> {
    if region.health == Health::Healthy {
        return None;
    }
    let reason = region.reason.as_deref().unwrap_or("unhealthy");
    Some(format!("region {}: {reason}", region.id))
}

#[cfg(test)]
mod tests;
